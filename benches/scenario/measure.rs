//! Measuring the targets: the plain-HTTP section (bare hyper, Kagami, nginx) and the HTTPS
//! section (Kagami and nginx with the same certificate), each target warmed, checked for hits,
//! then loaded run by run, with its CPU use and anything that disturbed it.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context as _};
use http::{HeaderMap, StatusCode};

use crate::load::{fetch_once, load, Endpoint, Kind};
use crate::nginx::Nginx;
use crate::report::{show_cpu_use, show_share, show_us, Row, ServerCpu};
use crate::servers::{start_bare, start_kagami, Flavor, Origin};
use crate::tls::{self, BenchCert, ClientTls};
use crate::{
    affinity, which, Run, Settings, Target, OBJECTS, OTHER_WORK_WARNING, PLAIN_RUNS, TLS_RUNS,
};

fn kagami_hit(headers: &HeaderMap) -> bool {
    headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("hit"))
}

fn nginx_hit(headers: &HeaderMap) -> bool {
    headers.get("x-cache-status").is_some_and(|v| v == "HIT")
}

/// Plain HTTP: bare hyper (the ceiling), Kagami, nginx with each `sendfile` setting.
pub fn measure_plain(
    origin: &Origin,
    settings: &Settings,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    if settings.run_bare {
        let bare = start_bare(settings.server_cpu, settings.bare_flavor)?;
        println!(
            "bare: http://{} (hyper http1 alone, {})",
            bare.addr,
            settings.bare_flavor.describe()
        );
        let result = measure_target(
            Target::Bare,
            &Endpoint::plain(bare.addr),
            &PLAIN_RUNS,
            origin,
            settings,
            rows,
            |_| true,
            || bare.cpu_seconds(),
        );
        bare.stop();
        result?;
    }
    if settings.run_kagami {
        let kagami = start_kagami(origin.addr(), settings.server_cpu, None)?;
        println!(
            "kagami: http://{} ({})",
            kagami.addr,
            Flavor::OneWorker.describe()
        );
        let result = measure_target(
            Target::Kagami,
            &Endpoint::plain(kagami.addr),
            &PLAIN_RUNS,
            origin,
            settings,
            rows,
            kagami_hit,
            || kagami.cpu_seconds(),
        );
        kagami.stop();
        result?;
    }
    match which("nginx") {
        _ if !settings.run_nginx => {}
        None => println!("nginx: not installed (not on PATH); skipping the nginx comparison"),
        Some(nginx_bin) => {
            for &sendfile in &settings.nginx_sendfile {
                measure_nginx(&nginx_bin, sendfile, None, origin, settings, rows);
            }
        }
    }
    Ok(())
}

/// HTTPS: Kagami and nginx with one freshly generated certificate, `TLS_RUNS` each.
pub fn measure_tls(
    origin: &Origin,
    settings: &Settings,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    if !settings.run_kagami && !settings.run_nginx {
        return Ok(());
    }
    let cert = BenchCert::generate().context("generating the bench certificate")?;
    let client = ClientTls::new()?;
    if settings.run_kagami {
        let kagami = start_kagami(
            origin.addr(),
            settings.server_cpu,
            Some(cert.certified.clone()),
        )?;
        let endpoint = Endpoint {
            addr: kagami.addr,
            tls: Some(client.clone()),
        };
        let result = tls::probe(kagami.addr, &client)
            .context("kagami-tls: TLS handshake")
            .and_then(|negotiated| {
                println!(
                    "kagami-tls: https://{}:{} ({}; {negotiated})",
                    tls::NAME,
                    kagami.addr.port(),
                    Flavor::OneWorker.describe()
                );
                measure_target(
                    Target::KagamiTls,
                    &endpoint,
                    &TLS_RUNS,
                    origin,
                    settings,
                    rows,
                    kagami_hit,
                    || kagami.cpu_seconds(),
                )
            });
        kagami.stop();
        result?;
    }
    match which("nginx") {
        _ if !settings.run_nginx => {}
        None => println!("nginx-tls: nginx is not installed; skipping the nginx comparison"),
        // sendfile off: without kTLS nginx encrypts through OpenSSL either way.
        Some(nginx_bin) => measure_nginx(
            &nginx_bin,
            false,
            Some((&cert, &client)),
            origin,
            settings,
            rows,
        ),
    }
    Ok(())
}

/// Starts nginx (`sendfile` as given, HTTPS with `tls`), measures it, stops it; failures are
/// reported and leave its figures out.
fn measure_nginx(
    binary: &Path,
    sendfile: bool,
    tls: Option<(&BenchCert, &ClientTls)>,
    origin: &Origin,
    settings: &Settings,
    rows: &mut Vec<Row>,
) {
    let target = match tls {
        Some(_) => Target::NginxTls,
        None => Target::Nginx { sendfile },
    };
    let nginx = match Nginx::start(binary, origin.addr(), sendfile, settings, tls.map(|t| t.0)) {
        Ok(nginx) => nginx,
        Err(err) => {
            println!(
                "{}: could not be started ({err:#}); skipping it",
                target.label()
            );
            return;
        }
    };
    let result = match tls {
        None => {
            println!(
                "{}: http://{} (proxy_cache, worker_processes 1, sendfile {})",
                target.label(),
                nginx.addr,
                if sendfile { "on" } else { "off" }
            );
            measure_target(
                target,
                &Endpoint::plain(nginx.addr),
                &PLAIN_RUNS,
                origin,
                settings,
                rows,
                nginx_hit,
                || nginx.cpu_seconds(),
            )
        }
        Some((_, client)) => tls::probe(nginx.addr, client)
            .context("TLS handshake")
            .and_then(|negotiated| {
                println!(
                    "{}: https://{}:{} (proxy_cache, worker_processes 1, sendfile off; {negotiated})",
                    target.label(),
                    tls::NAME,
                    nginx.addr.port()
                );
                let endpoint = Endpoint {
                    addr: nginx.addr,
                    tls: Some(client.clone()),
                };
                measure_target(
                    target,
                    &endpoint,
                    &TLS_RUNS,
                    origin,
                    settings,
                    rows,
                    nginx_hit,
                    || nginx.cpu_seconds(),
                )
            }),
    };
    drop(nginx);
    if let Err(err) = result {
        println!(
            "{}: run failed ({err:#}); its figures are incomplete",
            target.label()
        );
    }
}

/// Warms `target`'s cache (one request per object, then checks a hit), then measures `runs`.
// Each argument is one part of the measurement; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn measure_target(
    target: Target,
    endpoint: &Endpoint,
    runs: &[Run],
    origin: &Origin,
    settings: &Settings,
    rows: &mut Vec<Row>,
    is_hit: impl Fn(&HeaderMap) -> bool,
    server_cpu: impl Fn() -> Option<f64>,
) -> anyhow::Result<()> {
    let name = target.label();
    for (path, size) in OBJECTS {
        let (status, _, len) =
            fetch_once(endpoint, path).with_context(|| format!("{name}: warming {path}"))?;
        if status != StatusCode::OK || len != size {
            bail!(
                "{name}: warming {path}: got {status} with {len} bytes, expected 200 with {size}"
            );
        }
        let (_, headers, _) =
            fetch_once(endpoint, path).with_context(|| format!("{name}: checking {path}"))?;
        if !is_hit(&headers) {
            println!("{name}: WARNING: the second request for {path} was not reported as a hit: {headers:?}");
        }
    }
    for run in runs {
        rows.push(measure_run(
            target,
            endpoint,
            run,
            origin,
            settings,
            &server_cpu,
        )?);
    }
    Ok(())
}

/// One run: unmeasured warm-up load, then the measured load with the CPU and connection
/// counts around it.
fn measure_run(
    target: Target,
    endpoint: &Endpoint,
    run: &Run,
    origin: &Origin,
    settings: &Settings,
    server_cpu: &impl Fn() -> Option<f64>,
) -> anyhow::Result<Row> {
    let name = target.label();
    let label = run.label;
    if settings.warmup_secs > 0 {
        load(endpoint, run.path, run.kind, settings.warmup_secs, settings)
            .with_context(|| format!("{name}: warm-up load on {label}"))?;
    }
    let before = origin.count(run.path);
    let opens_before = tls::passive_opens();
    let load_before = settings.load_cpu.and_then(affinity::cpu_ticks);
    let server_before = settings.server_cpu.and_then(affinity::cpu_ticks);
    let cpu_before = server_cpu();
    let started = Instant::now();
    let result = load(endpoint, run.path, run.kind, settings.secs, settings)
        .with_context(|| format!("{name}: load on {label}"))?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, server_cpu()) {
        (Some(a), Some(b)) if result.requests > 0 => Some(ServerCpu {
            busy: (b - a) / wall,
            us_per_request: (b - a) * 1e6 / result.requests as f64,
        }),
        _ => None,
    };
    let opens = match (opens_before, tls::passive_opens()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let load_busy =
        affinity::busy_share(load_before, settings.load_cpu.and_then(affinity::cpu_ticks));
    // Time the server's CPU spent on anything but the server: other processes (or
    // interrupts) that disturbed this run.
    let other_busy = match (
        affinity::busy_share(
            server_before,
            settings.server_cpu.and_then(affinity::cpu_ticks),
        ),
        cpu,
    ) {
        (Some(total), Some(own)) => Some((total - own.busy).max(0.0)),
        _ => None,
    };
    let origin_requests = origin.count(run.path) - before;
    let (busy, per_request) = show_cpu_use(cpu);
    println!(
        "{name:>12} {label:<10} {:>10.0} req/s  p50 {:>9}  p99 {:>9}  server cpu {busy} = {per_request}/req, other work on its cpu {}, load generator cpu {} ({} requests, {} errors, {}; origin requests {origin_requests}; new connections {})",
        result.rps,
        show_us(result.p50_us),
        show_us(result.p99_us),
        show_share(other_busy),
        show_share(load_busy),
        result.requests,
        result.errors,
        result.tool,
        opens.map_or_else(|| String::from("n/a"), |n| n.to_string()),
    );
    if origin_requests > 2 {
        println!("{name:>12} {label:<10} WARNING: {origin_requests} origin requests: the cache did not absorb the load");
    }
    if let Some(other) = other_busy.filter(|o| *o > OTHER_WORK_WARNING) {
        println!(
            "{name:>12} {label:<10} WARNING: other work took {:.0}% of the server's cpu during \
             this run: its figures are disturbed",
            other * 100.0
        );
    }
    if result.errors > 0 {
        println!(
            "{name:>12} {label:<10} WARNING: {} failed or non-2xx answers (e.g. 429 from a rate \
             limit): its figures do not measure the hit path",
            result.errors
        );
    }
    if let (Kind::Handshakes { .. }, Some(opens)) = (run.kind, opens) {
        if opens < result.requests {
            println!(
                "{name:>12} {label:<10} WARNING: only {opens} connections accepted for {} \
                 requests: the client did not reconnect for every request",
                result.requests
            );
        }
    }
    Ok(Row {
        target,
        object: label,
        result,
        cpu,
        load_busy,
        other_busy,
        origin_requests,
        round: 0,
    })
}
