use super::*;
use rust_decimal_macros::dec;

fn usd(amount: Decimal) -> Money {
    Money::new(amount, Currency::USD)
}

fn window(secs: u64) -> RateWindow {
    RateWindow {
        window_secs: secs,
        max_requests: Some(10),
        max_tokens: None,
        max_cost: None,
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn full_policy() -> KeyPolicy {
    KeyPolicy {
        concurrency: Some(4),
        rate_windows: vec![
            window(60),
            RateWindow {
                window_secs: 3600,
                max_requests: None,
                max_tokens: Some(1_000_000),
                max_cost: Some(usd(dec!(5))),
            },
        ],
        budgets: vec![
            Budget {
                period: BudgetPeriod::Daily,
                cap: usd(dec!(10)),
            },
            Budget {
                period: BudgetPeriod::Monthly,
                cap: usd(dec!(100)),
            },
        ],
        allowed_models: vec!["claude-*".into(), "gpt-4o".into()],
        denied_models: vec!["claude-opus-*".into()],
        services: [Service::Anthropic, Service::Openai].into(),
        clients: [ClientFamily::ClaudeCode].into(),
        ip_allow: vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
        expiry: Some(Expiry::AfterFirstUse { seconds: 86_400 }),
        service_multipliers: [(Service::Anthropic, dec!(1.5))].into(),
        ..KeyPolicy::default()
    }
}

#[test]
fn a_full_policy_and_the_default_are_valid() {
    full_policy().validate().unwrap();
    KeyPolicy::default().validate().unwrap();
}

fn expect_err(mutate: impl FnOnce(&mut KeyPolicy)) -> PolicyError {
    let mut p = full_policy();
    mutate(&mut p);
    p.validate().expect_err("policy should be rejected")
}

#[test]
fn every_validation_error_is_reported_with_an_actionable_message() {
    let cases: Vec<(PolicyError, &str)> = vec![
        (expect_err(|p| p.concurrency = Some(0)), "at least 1"),
        (
            expect_err(|p| p.rate_windows = (1..=9).map(window).collect()),
            "9 rate windows: a policy may have at most 8",
        ),
        (
            expect_err(|p| p.rate_windows[0].window_secs = 0),
            "0 seconds",
        ),
        (
            expect_err(|p| {
                p.rate_windows[0].max_requests = None;
            }),
            "sets no cap",
        ),
        (expect_err(|p| p.rate_windows.push(window(60))), "merge"),
        (
            expect_err(|p| p.rate_windows[0].max_requests = Some(0)),
            "max_requests is 0",
        ),
        (
            expect_err(|p| p.rate_windows[1].max_tokens = Some(0)),
            "max_tokens is 0",
        ),
        (
            expect_err(|p| p.rate_windows[1].max_cost = Some(usd(dec!(-1)))),
            "greater than zero",
        ),
        (
            expect_err(|p| p.budgets[0].cap = usd(Decimal::ZERO)),
            "daily budget cap must be greater than zero",
        ),
        (
            expect_err(|p| p.budgets[1].cap = Money::new(dec!(100), Currency::CNY)),
            "is in CNY but this policy counts cost in USD",
        ),
        (
            expect_err(|p| {
                p.budgets.push(Budget {
                    period: BudgetPeriod::Daily,
                    cap: usd(dec!(1)),
                })
            }),
            "two daily budgets",
        ),
        (
            expect_err(|p| p.budget_schedule.weekly_reset_hour = 24),
            "0-23",
        ),
        (expect_err(|p| p.allowed_models.push("".into())), "invalid"),
        (
            expect_err(|p| p.allowed_models.push("cl*ude".into())),
            "invalid",
        ),
        (
            expect_err(|p| p.denied_models.push("gpt 4".into())),
            "invalid",
        ),
        (
            expect_err(|p| p.allowed_models.push("claude-opus-4".into())),
            "allowed but also denied by `claude-opus-*`",
        ),
        (
            expect_err(|p| p.denied_models.push("gpt-4o".into())),
            "allowed but also denied",
        ),
        (
            expect_err(|p| {
                p.service_multipliers.insert(Service::Gemini, Decimal::ZERO);
            }),
            "multiplier for gemini",
        ),
        (
            expect_err(|p| p.expiry = Some(Expiry::AfterFirstUse { seconds: 0 })),
            "at least 1 second",
        ),
    ];
    for (err, needle) in cases {
        assert!(
            err.to_string().contains(needle),
            "message {:?} should contain {needle:?}",
            err.to_string()
        );
    }
}

#[test]
fn unknown_currency_and_service_fail_to_parse() {
    let json = r#"{"budgets":[{"period":"daily","cap":{"amount":"5","currency":"XYZ"}}]}"#;
    let err = serde_json::from_str::<KeyPolicy>(json).unwrap_err();
    assert!(err.to_string().contains("unknown currency `XYZ`"), "{err}");
    assert!(serde_json::from_str::<KeyPolicy>(r#"{"services":["bard"]}"#).is_err());
    assert!("bard".parse::<Service>().is_err());
}

#[test]
fn policy_round_trips_through_json() {
    let p = full_policy();
    let json = serde_json::to_string(&p).unwrap();
    let back: KeyPolicy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    let empty: KeyPolicy = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, KeyPolicy::default());
}

#[test]
fn deny_carving_out_of_a_broad_allow_is_fine() {
    let p = KeyPolicy {
        allowed_models: vec!["claude-*".into()],
        denied_models: vec!["claude-opus-*".into()],
        ..KeyPolicy::default()
    };
    p.validate().unwrap();
    assert!(p.allows_model("claude-sonnet-4-5"));
    assert!(!p.allows_model("claude-opus-4-1"));
    assert!(!p.allows_model("gpt-4o"));
    assert!(KeyPolicy::default().allows_model("anything"));
}

#[test]
fn static_checks() {
    let p = full_policy();
    assert!(p.allows_service(Service::Anthropic));
    assert!(!p.allows_service(Service::Gemini));
    assert!(p.allows_client(Some("claude-cli/1.0.83 (external, cli)")));
    assert!(!p.allows_client(Some("curl/8.0")));
    assert!(!p.allows_client(None));
    assert!(p.allows_ip("10.1.2.3".parse().unwrap()));
    assert!(p.allows_ip("::ffff:10.1.2.3".parse().unwrap()));
    assert!(p.allows_ip("2001:db8::1".parse().unwrap()));
    assert!(!p.allows_ip("192.168.1.1".parse().unwrap()));
    assert_eq!(p.multiplier(Service::Anthropic), dec!(1.5));
    assert_eq!(p.multiplier(Service::Openai), Decimal::ONE);
    let first = at("2026-03-01T00:00:00Z");
    assert_eq!(p.expires_at(None), None);
    assert_eq!(p.expires_at(Some(first)), Some(at("2026-03-02T00:00:00Z")));
}

#[test]
fn client_families() {
    assert_eq!(
        ClientFamily::from_user_agent("codex_cli_rs/0.20.0 (Mac OS)"),
        Some(ClientFamily::CodexCli)
    );
    assert_eq!(
        ClientFamily::from_user_agent("GeminiCLI/0.1.5 (linux; x64)"),
        Some(ClientFamily::GeminiCli)
    );
    assert_eq!(ClientFamily::from_user_agent("Mozilla/5.0"), None);
}

#[test]
fn daily_period_in_shanghai_crosses_utc_midnight() {
    let s = BudgetSchedule {
        timezone: chrono_tz::Asia::Shanghai,
        ..BudgetSchedule::default()
    };
    // 15:59 UTC is 23:59 in Shanghai; 16:00 UTC is the next local day.
    let before = at("2026-05-10T15:59:59Z");
    let after = at("2026-05-10T16:00:00Z");
    assert_eq!(
        s.period_start(BudgetPeriod::Daily, before),
        Some(at("2026-05-09T16:00:00Z"))
    );
    assert_eq!(
        s.period_end(BudgetPeriod::Daily, before),
        Some(at("2026-05-10T16:00:00Z"))
    );
    assert_eq!(s.period_start(BudgetPeriod::Daily, after), Some(after));
    assert_eq!(
        s.period_start(BudgetPeriod::Monthly, at("2026-05-31T16:30:00Z")),
        Some(at("2026-05-31T16:00:00Z"))
    );
    assert_eq!(
        s.period_end(BudgetPeriod::Monthly, at("2026-12-15T00:00:00Z")),
        Some(at("2026-12-31T16:00:00Z"))
    );
    assert_eq!(s.period_start(BudgetPeriod::Total, after), None);
}

#[test]
fn weekly_period_uses_reset_day_and_hour() {
    let s = BudgetSchedule {
        timezone: chrono_tz::America::New_York,
        weekly_reset_day: Weekday::Wed,
        weekly_reset_hour: 9,
    };
    // 2026-05-13 is a Wednesday; 09:00 EDT is 13:00 UTC.
    assert_eq!(
        s.period_start(BudgetPeriod::Weekly, at("2026-05-13T12:59:00Z")),
        Some(at("2026-05-06T13:00:00Z"))
    );
    assert_eq!(
        s.period_start(BudgetPeriod::Weekly, at("2026-05-13T13:00:00Z")),
        Some(at("2026-05-13T13:00:00Z"))
    );
    assert_eq!(
        s.period_end(BudgetPeriod::Weekly, at("2026-05-14T00:00:00Z")),
        Some(at("2026-05-20T13:00:00Z"))
    );
}

#[test]
fn daily_period_across_a_daylight_saving_change() {
    let s = BudgetSchedule {
        timezone: chrono_tz::America::New_York,
        ..BudgetSchedule::default()
    };
    // 2026-03-08: clocks go from 02:00 to 03:00; the day is 23 hours long.
    let start = s
        .period_start(BudgetPeriod::Daily, at("2026-03-08T12:00:00Z"))
        .unwrap();
    let end = s
        .period_end(BudgetPeriod::Daily, at("2026-03-08T12:00:00Z"))
        .unwrap();
    assert_eq!(start, at("2026-03-08T05:00:00Z"));
    assert_eq!(end, at("2026-03-09T04:00:00Z"));
    assert_eq!((end - start).num_hours(), 23);
}
