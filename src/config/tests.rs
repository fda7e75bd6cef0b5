//! Unit tests of the configuration: defaults, files, validation, the generated file.

use super::*;

#[test]
fn public_address_needs_secrets_or_insecure() {
    let mut c = Config {
        address: "0.0.0.0".parse().unwrap(),
        ..Config::default()
    };
    assert!(c.validate().unwrap_err().to_string().contains("--insecure"));
    c.token_hmac_secret = Some("s".into());
    assert!(c.validate().unwrap_err().to_string().contains("--api-key"));
    c.api_key = Some("k".into());
    c.validate().unwrap();
    let open = Config {
        address: "0.0.0.0".parse().unwrap(),
        insecure: true,
        ..Config::default()
    };
    open.validate().unwrap();
    Config::default().validate().unwrap();
}

#[test]
fn a_personal_channel_namespace_must_be_configured() {
    let mut c = Config {
        subscribe_to_user_personal_channel: true,
        personal_channel_namespace: "personal".into(),
        ..Config::default()
    };
    assert!(c.validate().is_err());
    c.namespace.push(Namespace {
        name: "personal".into(),
        ..Default::default()
    });
    c.validate().unwrap();
}

#[test]
fn generated_config_parses_and_validates() {
    let text = generate();
    let c: Config = toml::from_str(&text).unwrap();
    c.validate().unwrap();
    assert_eq!(c.api_key.unwrap().len(), 32);
    assert_ne!(generate(), text, "fresh secrets each time");
    assert_eq!(c.namespace.len(), 2);
}

#[test]
fn the_generated_map_namespace_parses_and_bad_map_options_are_refused() {
    // The commented map example of the generated file, uncommented.
    let text = generate();
    let start = text.find("# [[namespace]]\n# name = \"cursors\"").unwrap();
    let example: String = text[start..]
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            // Settings and tables, not the prose around them.
            Some(setting)
                if setting.starts_with('[')
                    || setting.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                setting
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let with_map = format!("{}\n{example}", &text[..start]);
    let c: Config = toml::from_str(&with_map).unwrap();
    c.validate().unwrap();
    let board = c.namespace.iter().find(|ns| ns.name == "cursors").unwrap();
    assert_eq!(board.subscription_type.as_deref(), Some("map"));
    assert_eq!(board.map.as_ref().unwrap().max_keys, Some(10000));
    let who = c.namespace.iter().find(|ns| ns.name == "who").unwrap();
    assert_eq!(who.subscription_type.as_deref(), Some("map_clients"));

    let refused = |toml: &str| {
        let c: Config = toml::from_str(toml).unwrap();
        c.validate().unwrap_err().to_string()
    };
    let map = |options: &str| {
        format!(
            "[[namespace]]\nname = \"m\"\nsubscription_type = \"map\"\n[namespace.map]\n{options}"
        )
    };
    assert!(refused(&map("")).contains("map.mode"));
    assert!(refused(&map("mode = \"durable\"")).contains("key_ttl"));
    assert!(refused(&map("mode = \"persistent\"\nkey_ttl = \"1m\"")).contains("key_ttl"));
    assert!(refused(&map("mode = \"persistent\"\nclient_key = \"x\"")).contains("client_key"));
    assert!(refused(&map("mode = \"persistent\"\nmax_keys = 0")).contains("at least 1"));
    assert!(
        refused("[[namespace]]\nname = \"p\"\nsubscription_type = \"shared_poll\"")
            .contains("not supported")
    );
    // Map presence: the prefix must name a namespace of the right type.
    let presence = |kind: &str| {
        format!(
            "[[namespace]]\nname = \"game\"\nmap_clients_presence_channel_prefix = \"clients:\"\n\
             [[namespace]]\nname = \"clients\"\nsubscription_type = \"{kind}\"\n\
             [namespace.map]\nmode = \"durable\""
        )
    };
    let ok: Config = toml::from_str(&presence("map_clients")).unwrap();
    ok.validate().unwrap();
    assert!(refused(&presence("map_users")).contains("map_clients_presence_channel_prefix"));
    assert!(
        refused(&presence("map_clients").replace("durable", "persistent")).contains("ephemeral")
    );
    assert!(
        refused("[[namespace]]\nname = \"p\"\n[namespace.map]\nmode = \"persistent\"")
            .contains("subscription_type")
    );
    let ok: Config = toml::from_str(&map("mode = \"ephemeral\"\nkey_ttl = \"30s\"")).unwrap();
    ok.validate().unwrap();
}

#[test]
fn file_values_override_defaults_and_unknown_keys_fail() {
    let c: Config = toml::from_str("port = 9000\njoin_leave = false").unwrap();
    assert_eq!(c.port, 9000);
    assert!(!c.join_leave);
    assert_eq!(c.ping_interval, 25);
    assert!(toml::from_str::<Config>("prot = 1").is_err());
}

#[test]
fn proxy_settings_parse_and_validate() {
    let c: Config = toml::from_str(
        "proxy_connect_endpoint = \"http://127.0.0.1:9000/connect\"\n\
         proxy_timeout = \"250ms\"\n\
         proxy_http_headers = [\"Cookie\"]\n\
         proxy_binary_encoding = true\n\
         [proxy_static_headers]\n\
         X-Secret = \"s\"\n",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.proxy_timeout, Duration::from_millis(250));
    assert!(c.proxy_binary_encoding);
    assert!(c.uses_proxy());
    assert!(
        !c.anonymous_allowed(),
        "the backend decides clients without a token"
    );
    let seconds: Config = toml::from_str("proxy_timeout = 2").unwrap();
    assert_eq!(seconds.proxy_timeout, Duration::from_secs(2));
    let bad = Config {
        proxy_rpc_endpoint: Some("ftp://x".into()),
        ..Config::default()
    };
    assert!(bad.validate().is_err());
    let pointless = Config {
        proxy_binary_encoding: true,
        ..Config::default()
    };
    let error = pointless.validate().unwrap_err().to_string();
    assert!(error.contains("proxy_binary_encoding"), "{error}");
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert!(parse_duration("5 parsecs").is_err());
}

#[test]
fn trusted_proxies_are_cidrs_and_a_bad_one_is_named() {
    let c: Config = toml::from_str(
        r#"trusted_proxies = ["10.0.0.0/8", "127.0.0.1", "::1/128", "10.1.2.3/16"]"#,
    )
    .unwrap();
    let shown: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        shown,
        ["10.0.0.0/8", "127.0.0.1/32", "::1/128", "10.1.0.0/16"]
    );
    for bad in ["10.0.0.0/33", "nginx", "10.0.0/8", ""] {
        let text = format!("trusted_proxies = [{bad:?}]");
        let error = toml::from_str::<Config>(&text).unwrap_err().to_string();
        assert!(
            error.contains("bad CIDR") && error.contains("trusted_proxies"),
            "{error}"
        );
    }
    assert!(parse_cidr("192.168.0.0/24").is_ok());
    assert!(parse_cidr("192.168.0.0/-1").is_err());
}

#[test]
fn no_per_ip_connection_limit_by_default() {
    assert_eq!(Config::default().connection_rate_per_ip, 0);
    assert!(Config::default().trusted_proxies.is_empty());
}

#[test]
fn idempotency_window_parses_with_units_and_must_be_positive() {
    assert_eq!(
        Config::default().idempotency_window,
        Duration::from_secs(300)
    );
    let c: Config = toml::from_str("idempotency_window = \"30s\"").unwrap();
    c.validate().unwrap();
    assert_eq!(c.idempotency_window, Duration::from_secs(30));
    let minutes: Config = toml::from_str("idempotency_window = \"2m\"").unwrap();
    assert_eq!(minutes.idempotency_window, Duration::from_secs(120));
    let seconds: Config = toml::from_str("idempotency_window = 10").unwrap();
    assert_eq!(seconds.idempotency_window, Duration::from_secs(10));
    let zero = Config {
        idempotency_window: Duration::ZERO,
        ..Config::default()
    };
    assert!(zero.validate().is_err());
    let generated: Config = toml::from_str(&super::generate()).unwrap();
    assert_eq!(generated.idempotency_window, Duration::from_secs(300));
}

#[test]
fn single_connection_needs_personal_channels_with_presence() {
    let mut config = Config {
        personal_single_connection: true,
        ..Config::default()
    };
    assert!(config.validate().is_err(), "without personal channels");
    config.subscribe_to_user_personal_channel = true;
    assert!(config.validate().is_ok());
    config.presence = false;
    assert!(config.validate().is_err(), "without presence");
}

#[test]
fn sentinel_needs_its_master_name_and_excludes_plain_urls() {
    let mut c = Config {
        redis_sentinel: vec!["127.0.0.1:26379".into()],
        ..Config::default()
    };
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("redis_sentinel_master"));
    c.redis_sentinel_master = Some("main".into());
    c.validate().unwrap();
    assert!(c.uses_redis());
    c.redis = vec!["redis://127.0.0.1:6379".into()];
    assert!(c.validate().unwrap_err().to_string().contains("exclusive"));
    let cluster = Config {
        redis_cluster: vec!["127.0.0.1:7000".into()],
        ..Config::default()
    };
    cluster.validate().unwrap();
    assert!(cluster.uses_redis());
    let braced = Config {
        redis_prefix: "{sb}".into(),
        ..cluster.clone()
    };
    assert!(braced.validate().is_err());
    let waiting = Config {
        redis_wait_replicas: 1,
        ..cluster.clone()
    };
    waiting.validate().unwrap();
    let mut with_maps = cluster;
    with_maps.channel.subscription_type = Some("map".into());
    with_maps.channel.map = Some(crate::config::MapNamespace {
        mode: Some("durable".into()),
        key_ttl: Some(Duration::from_secs(60)),
        ..Default::default()
    });
    with_maps.validate().unwrap();
    let waiting: Config = toml::from_str(
        "redis = [\"redis://127.0.0.1\"]\nredis_wait_replicas = 1\nredis_wait_timeout = \"250ms\"",
    )
    .unwrap();
    assert_eq!(waiting.redis_wait_timeout, Duration::from_millis(250));
    waiting.validate().unwrap();
    let too_long = Config {
        redis_wait_replicas: 1,
        redis_wait_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    assert!(too_long.validate().is_err());
}

#[test]
fn redis_tls_ca_is_read_from_its_file_and_needs_redis() {
    let alone: Config = toml::from_str("redis_tls_ca = \"/nowhere/ca.pem\"").unwrap();
    assert!(alone
        .validate()
        .unwrap_err()
        .to_string()
        .contains("redis_tls_ca"));
    let missing = Config {
        redis: vec!["rediss://127.0.0.1:6380".into()],
        ..alone
    };
    missing.validate().unwrap();
    assert!(missing
        .redis_tls_roots()
        .unwrap_err()
        .to_string()
        .contains("/nowhere/ca.pem"));
    let dir = std::env::temp_dir().join(format!("switchboard-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pem, junk) = (dir.join("ca.pem"), dir.join("junk.pem"));
    std::fs::write(
        &pem,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(&junk, "not a certificate").unwrap();
    let given = Config {
        redis_tls_ca: Some(pem),
        ..missing.clone()
    };
    assert!(given.redis_tls_roots().unwrap().is_some());
    let shown = show::effective_settings(&given).unwrap();
    assert!(shown.contains("redis_tls_ca"), "{shown}");
    let junk = Config {
        redis_tls_ca: Some(junk),
        ..missing
    };
    assert!(junk
        .redis_tls_roots()
        .unwrap_err()
        .to_string()
        .contains("PEM"));
    assert!(Config::default().redis_tls_roots().unwrap().is_none());
    let _ = std::fs::remove_dir_all(dir);
}
