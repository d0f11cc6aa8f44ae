//! Turning the raw TOML (`raw`) into the validated model: every key checked, every problem
//! collected with its key and reason (never only the first), defaults filled in.

use super::*;

pub(super) fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let mut problems = Problems::default();
    let mut config = Config::new(Vec::new(), Vec::new());

    let server = raw.server.unwrap_or_default();
    let listen = server
        .listen
        .unwrap_or_else(|| vec!["127.0.0.1:8080".to_string()]);
    config.server.listen_tls = tls::listen_tls(&server.listen_tls, &mut problems);
    if listen.is_empty() && config.server.listen_tls.is_empty() {
        problems.add(
            "server.listen",
            "needs at least one address such as \"0.0.0.0:80\"",
        );
    }
    for (i, addr) in listen.iter().enumerate() {
        match addr.parse::<SocketAddr>() {
            Ok(a) => config.server.listen.push(a),
            Err(_) => problems.add(
                format!("server.listen[{i}]"),
                format!("{addr:?} is not an IP:port address such as \"0.0.0.0:80\" or \"[::]:80\""),
            ),
        }
    }
    config.server.header_read_timeout = problems.duration(
        "server.header_read_timeout".into(),
        &server.header_read_timeout,
        config.server.header_read_timeout,
    );
    config.server.drain_timeout = problems.duration(
        "server.drain_timeout".into(),
        &server.drain_timeout,
        config.server.drain_timeout,
    );
    config.server.idle_timeout = problems.duration(
        "server.idle_timeout".into(),
        &server.idle_timeout,
        config.server.idle_timeout,
    );
    for (key, value) in [
        (
            "server.header_read_timeout",
            config.server.header_read_timeout,
        ),
        ("server.idle_timeout", config.server.idle_timeout),
    ] {
        if value.is_zero() && !problems.0.iter().any(|p| p.key == key) {
            problems.add(key, "must be longer than 0s");
        }
    }
    if server.worker_threads == Some(0) {
        problems.add(
            "server.worker_threads",
            "must be at least 1 (omit it for one per core)",
        );
    }
    config.server.worker_threads = server.worker_threads.filter(|n| *n > 0);
    let defaults = config.server.clone();
    let header_size = problems.size(
        "server.max_header_size".into(),
        &server.max_header_size,
        defaults.max_header_size,
    );
    if !(8 * 1024..=1 << 20).contains(&header_size) {
        problems.add("server.max_header_size", "must be between 8KiB and 1MiB");
    }
    config.server.max_header_size = header_size.clamp(8 * 1024, 1 << 20);
    config.server.max_request_body = problems.size(
        "server.max_request_body".into(),
        &server.max_request_body,
        defaults.max_request_body,
    );
    for (key, value, default, slot) in [
        (
            "server.max_headers",
            server.max_headers,
            defaults.max_headers,
            &mut config.server.max_headers,
        ),
        (
            "server.max_connections",
            server.max_connections,
            defaults.max_connections,
            &mut config.server.max_connections,
        ),
        (
            "server.max_connections_per_client",
            server.max_connections_per_client,
            defaults.max_connections_per_client,
            &mut config.server.max_connections_per_client,
        ),
        (
            "server.max_requests_in_flight",
            server.max_requests_in_flight,
            defaults.max_requests_in_flight,
            &mut config.server.max_requests_in_flight,
        ),
    ] {
        if value == Some(0) || value.is_some_and(|v| v > MAX_COUNT) {
            problems.add(key, format!("must be between 1 and {MAX_COUNT}"));
        }
        *slot = value
            .filter(|v| (1..=MAX_COUNT).contains(v))
            .unwrap_or(default);
    }
    if server.h2_max_concurrent_streams == Some(0) {
        problems.add("server.h2_max_concurrent_streams", "must be at least 1");
    }
    config.server.h2_max_concurrent_streams = server
        .h2_max_concurrent_streams
        .filter(|v| *v > 0)
        .unwrap_or(defaults.h2_max_concurrent_streams);

    let limits = raw.limits.unwrap_or_default();
    let base = path.parent().unwrap_or(Path::new("."));
    for (i, net) in limits.trusted_proxies.iter().flatten().enumerate() {
        let parsed = net
            .parse::<IpNet>()
            .or_else(|_| net.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => config.limits.trusted_proxies.push(n),
            Err(_) => problems.add(
                format!("limits.trusted_proxies[{i}]"),
                format!("{net:?} is not an address or CIDR block such as \"10.0.0.0/8\""),
            ),
        }
    }
    let default_limits = LimitsConfig::default();
    config.limits.hits = problems.rate(
        "limits.hits".into(),
        &limits.hits,
        limits.hits_burst,
        default_limits.hits,
    );
    config.limits.misses = problems.rate(
        "limits.misses".into(),
        &limits.misses,
        limits.misses_burst,
        default_limits.misses,
    );
    if limits.max_clients == Some(0) {
        problems.add("limits.max_clients", "must be at least 1");
    }
    config.limits.max_clients = limits
        .max_clients
        .filter(|v| *v > 0)
        .unwrap_or(default_limits.max_clients);
    if let Some(file) = &limits.page_429 {
        if let Some(page) = read_page(&mut problems, "limits.page_429", base, file) {
            config.limits.page_429 = page;
        }
    }

    let cache = raw.cache.unwrap_or_default();
    config.cache.memory = problems.size("cache.memory".into(), &cache.memory, config.cache.memory);
    if config.cache.memory < 1 << 20 {
        problems.add("cache.memory", "must be at least 1MiB");
    }
    if cache.inflight_memory.is_some() {
        let inflight = problems.size(
            "cache.inflight_memory".into(),
            &cache.inflight_memory,
            1 << 20,
        );
        if inflight < 1 << 20 {
            problems.add("cache.inflight_memory", "must be at least 1MiB");
        }
        config.cache.inflight_memory = Some(inflight);
    }
    let log = raw.log.unwrap_or_default();
    config.log.access = log.access.unwrap_or(true);
    config.log.format = match log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            problems.add(
                "log.format",
                format!("must be \"text\" or \"json\", not {other:?}"),
            );
            LogFormat::Text
        }
    };
    config.admin = Some(admin::validate(raw.admin, base, &mut problems));
    config.acme = acme::validate(raw.acme, base, &mut problems);

    if raw.site.is_empty() {
        problems.add(
            "site",
            "no [[site]] table: add one with name, hosts and origin",
        );
    }
    let mut names = HashSet::new();
    let mut hosts = HashSet::new();
    for (i, raw_site) in raw.site.iter().enumerate() {
        let prefix = format!("site[{i}]");
        if let Some(site) =
            site::validate_site(raw_site, &prefix, &config.limits, base, &mut problems)
        {
            if !names.insert(site.name.clone()) {
                problems.add(
                    format!("{prefix}.name"),
                    format!("{:?} is used by another site", site.name),
                );
            }
            for host in &site.hosts {
                if !hosts.insert(host.to_string()) {
                    problems.add(
                        format!("{prefix}.hosts"),
                        format!("{host} is listed by another site"),
                    );
                }
            }
            if config
                .cache
                .inflight_memory
                .is_some_and(|inflight| site.max_object_size > inflight)
            {
                problems.add(
                    format!("{prefix}.max_object_size"),
                    "is larger than cache.inflight_memory; objects that size could never be \
                     filled",
                );
            }
            if site.max_object_size > config.cache.memory {
                problems.add(
                    format!("{prefix}.max_object_size"),
                    "is larger than cache.memory; objects that size could never be stored",
                );
            }
            config.sites.push(site);
        }
    }
    tls::finish(&mut config, &mut problems);
    acme::finish(&config, &mut problems);
    hints::name_sites(&mut problems.0, &raw.site);
    problems.into_result(path)?;
    Ok(config)
}

/// Reads an HTML page named in the config; relative paths start at the config file's folder.
pub(crate) fn read_page(
    problems: &mut Problems,
    key: &str,
    base: &Path,
    file: &str,
) -> Option<Bytes> {
    let path = base.join(file);
    match std::fs::read(&path) {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(err) => {
            problems.add(key, format!("cannot read {}: {err}", path.display()));
            None
        }
    }
}
