//! Loading the configuration: the YAML file (or none), then `SYNCGATE_*` variables written
//! into the same tree, so that both get the same checks and error paths; then validation.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::{Config, ConfigError};

/// Short variables of the contract and the config key each one sets.
const SHORT_VARS: &[(&str, &str, &str)] = &[
    ("SYNCGATE_LISTEN", "server", "listen"),
    ("SYNCGATE_DATA_DIR", "server", "data_dir"),
    ("SYNCGATE_JWT_SECRET", "auth", "jwt_secret"),
    ("SYNCGATE_API_KEY", "auth", "api_keys"),
    ("SYNCGATE_REDIS_URL", "redis", "url"),
    ("SYNCGATE_INSTANCE_ID", "server", "instance_id"),
    ("SYNCGATE_LOG", "log", "level"),
];

/// Keys whose environment value is always a string, even when it looks like a number.
const STRING_KEYS: &[(&str, &str)] = &[
    ("server", "listen"),
    ("server", "instance_id"),
    ("server", "data_dir"),
    ("auth", "jwt_secret"),
    ("auth", "issuer"),
    ("auth", "audience"),
    ("redis", "url"),
    ("redis", "key_prefix"),
    ("log", "level"),
];

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[(&str, &str)] = &[
    ("auth", "api_keys"),
    ("server", "cors_origins"),
    ("messages", "allowed_types"),
    ("rooms", "client_publish"),
    ("admin", "keys"),
    ("server", "trusted_proxies"),
    ("webhooks", "client_message_types"),
];

impl Config {
    /// Loads the config: `file` (or SYNCGATE_CONFIG) if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like `load`, with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("SYNCGATE_")).collect();
        let env_file = env.iter().find(|(k, _)| k == "SYNCGATE_CONFIG").map(|(_, v)| PathBuf::from(v));
        let path = file.map(Path::to_path_buf).or(env_file);
        let mut tree = match &path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
                parse_yaml(&text)?
            }
            None => Value::Mapping(Default::default()),
        };
        apply_env(&mut tree, &env)?;
        let config = from_tree(tree)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a YAML text alone (no environment), validated.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let config = from_tree(parse_yaml(text)?)?;
        config.validate()?;
        Ok(config)
    }
}

fn parse_yaml(text: &str) -> Result<Value, ConfigError> {
    let v: Value = serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
    Ok(if v.is_null() { Value::Mapping(Default::default()) } else { v })
}

fn from_tree(tree: Value) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Key {
            path: if path == "." { "(top level)".into() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

/// Writes `SYNCGATE_*` variables into the YAML tree, so that they get the same checks and
/// error paths as keys written in the file.
fn apply_env(tree: &mut Value, env: &[(String, String)]) -> Result<(), ConfigError> {
    let mut sets: Vec<(String, String, String, &str)> = Vec::new();
    for (var, value) in env {
        if var == "SYNCGATE_CONFIG" {
            continue;
        }
        if let Some((_, section, key)) = SHORT_VARS.iter().find(|(v, _, _)| v == var) {
            sets.push((var.clone(), section.to_string(), key.to_string(), value));
        } else if let Some(rest) = var.strip_prefix("SYNCGATE_") {
            let Some((section, key)) = rest.split_once("__") else {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: "unknown variable; use SYNCGATE_<SECTION>__<KEY> or one of the documented short names"
                        .into(),
                });
            };
            sets.push((var.clone(), section.to_ascii_lowercase(), key.to_ascii_lowercase(), value));
        }
    }
    let Value::Mapping(root) = tree else {
        return Err(ConfigError::Yaml("the top level must be a mapping of sections".into()));
    };
    for (var, section, key, raw) in sets {
        let value = if LIST_KEYS.contains(&(section.as_str(), key.as_str())) {
            Value::Sequence(
                raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.into())).collect(),
            )
        } else if STRING_KEYS.contains(&(section.as_str(), key.as_str())) {
            Value::String(raw.to_string())
        } else {
            // Numbers and booleans keep their type; anything else stays a string.
            match serde_yaml::from_str::<Value>(raw) {
                Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
                _ => Value::String(raw.to_string()),
            }
        };
        let sec = root.entry(Value::String(section.clone())).or_insert_with(|| Value::Mapping(Default::default()));
        match sec {
            Value::Mapping(m) => {
                m.insert(Value::String(key), value);
            }
            _ => return Err(ConfigError::Env { var, message: format!("config section `{section}` is not a mapping") }),
        }
    }
    Ok(())
}
