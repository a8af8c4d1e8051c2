//! The user's usage by day and model, as JSON or CSV.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::dto::UsageRowDto;
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{ApiQuery, RangeQuery, Session};
use crate::api::ApiState;

/// Range and format.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Start (inclusive), RFC 3339; default 30 days before `to`.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// End (exclusive), RFC 3339; default now.
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// Usage rows as CSV (`day,model,requests,input_tokens,output_tokens,
/// cache_write_5m_tokens,cache_write_1h_tokens,cache_read_tokens,cost,charged,currency`;
/// token columns are empty when the source does not record tokens).
pub fn to_csv(rows: &[UsageRowDto]) -> String {
    let mut out = String::from(
        "day,model,requests,input_tokens,output_tokens,cache_write_5m_tokens,\
         cache_write_1h_tokens,cache_read_tokens,cost,charged,currency\n",
    );
    for r in rows {
        // Models are the only free text; quote them so a comma or quote cannot split a row.
        let model = format!("\"{}\"", r.model.replace('"', "\"\""));
        let tokens = r.tokens.as_ref().map_or_else(
            || ",,,,".to_owned(),
            |t| {
                format!(
                    "{},{},{},{},{}",
                    t.input, t.output, t.cache_write_5m, t.cache_write_1h, t.cache_read
                )
            },
        );
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            r.day,
            model,
            r.requests,
            tokens,
            r.cost.amount,
            r.charged.as_ref().map_or("", |c| c.amount.as_str()),
            r.cost.currency
        ));
    }
    out
}

/// Usage by day and model; `format=csv` downloads CSV.
#[utoipa::path(get, path = "/api/user/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = Vec<UsageRowDto>),
              (status = "4XX", body = ErrorBody)))]
pub async fn usage(
    State(s): State<ApiState>,
    me: Session,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> ApiResult<Response> {
    let (from, to) = RangeQuery {
        from: q.from,
        to: q.to,
    }
    .resolve(s.clock.now())?;
    let rows = s.usage.usage_by_day(&me.user.user.id, from, to).await?;
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(rows).into_response()),
        Some("csv") => {
            let mut resp = to_csv(&rows).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            resp.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"usage.csv\""),
            );
            Ok(resp)
        }
        Some(_) => Err(ApiError::invalid("format", "format must be json or csv")),
    }
}
