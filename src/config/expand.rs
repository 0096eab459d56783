//! `${VAR}` references in config values, read from the environment.

use super::ConfigError;

/// Expands `${VAR}` in every string of the document; `$$` is a literal `$`.
pub(super) fn expand_env(
    value: &mut toml::Value,
    at: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) => *s = expand_string(s, at, origin, env)?,
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, &format!("{at}[{i}]"), origin, env)?;
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                expand_env(v, &path, origin, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

pub(super) fn expand_string(
    s: &str,
    at: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let bad = |message: &str| ConfigError::BadReference {
        origin: origin.to_string(),
        at: at.to_string(),
        message: message.to_string(),
    };
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| bad("`${` without a closing `}`; write `$$` for a literal `$`"))?;
            let var = &tail[..end];
            let valid =
                !var.is_empty() && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(bad(&format!("`${{{var}}}` is not a variable name")));
            }
            let value = env(var).ok_or_else(|| ConfigError::UnsetVariable {
                origin: origin.to_string(),
                at: at.to_string(),
                var: var.to_string(),
            })?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}
