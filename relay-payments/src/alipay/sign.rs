//! Alipay's signing rules: parameters sorted by name, joined as `k=v&k=v`, signed with
//! SHA256withRSA ("RSA2").

use std::collections::BTreeMap;

/// The text Alipay signs: every parameter with a non-empty value, sorted by name, except
/// those in `exclude` (`sign` for requests; `sign` and `sign_type` for notifications).
pub fn alipay_sign_content(params: &BTreeMap<String, String>, exclude: &[&str]) -> String {
    let mut out = String::new();
    for (k, v) in params {
        if v.is_empty() || exclude.contains(&k.as_str()) {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}
