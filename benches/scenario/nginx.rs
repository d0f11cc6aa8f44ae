//! nginx `proxy_cache` for comparison: one pinned worker process in a temporary prefix,
//! `sendfile` on or off, plain HTTP or HTTPS (TLS 1.3 only, the bench certificate), killed
//! when dropped.

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::tls::BenchCert;
use crate::{affinity, Settings};

/// nginx with `proxy_cache` in a temporary prefix; killed when dropped (also on error paths).
pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(
        binary: &Path,
        origin: SocketAddr,
        sendfile: bool,
        settings: &Settings,
        tls: Option<&BenchCert>,
    ) -> anyhow::Result<Nginx> {
        let dir = tempfile::Builder::new()
            .prefix("kagami-bench-nginx")
            .tempdir()?;
        let root = dir.path();
        for sub in [
            "cache",
            "client_body",
            "proxy_temp",
            "fastcgi_temp",
            "uwsgi_temp",
            "scgi_temp",
        ] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        let addr = free_port()?;
        let conf = nginx_conf(root, addr, origin, sendfile, tls);
        let conf_path = root.join("nginx.conf");
        std::fs::write(&conf_path, &conf)?;
        let error_log = root.join("error.log");

        let mut command =
            affinity::pinned_command(binary, settings.server_cpu, settings.taskset.as_deref());
        command
            .arg("-e")
            .arg(&error_log)
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("stderr.log"))?);
        let child = command.spawn().context("spawning nginx")?;
        let mut nginx = Nginx {
            addr,
            child,
            _dir: dir,
        };

        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = nginx.child.try_wait()? {
                let stderr = std::fs::read_to_string(nginx._dir.path().join("stderr.log"))
                    .unwrap_or_default();
                let log = std::fs::read_to_string(&error_log).unwrap_or_default();
                bail!(
                    "nginx exited with {status}: {} {}",
                    stderr.trim(),
                    log.trim()
                );
            }
            if StdStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {addr} within 5 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Nginx {
    /// CPU seconds used so far by the nginx process.
    pub fn cpu_seconds(&self) -> Option<f64> {
        affinity::cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One nginx process (no master, so killing the child stops everything), caching on disk
/// in the temp dir, tuned for this load: cached open files, unlimited keep-alive requests,
/// upstream keep-alive, `sendfile` (and `tcp_nopush`) as chosen. With `tls`: the listener
/// speaks TLS 1.3 only with the bench certificate; session tickets stay on (nginx's default,
/// as Kagami's), so clients that resume can; HTTP/1.1 (no `http2`, so ALPN picks http/1.1).
fn nginx_conf(
    root: &Path,
    listen: SocketAddr,
    origin: SocketAddr,
    sendfile: bool,
    tls: Option<&BenchCert>,
) -> String {
    let ssl = match tls {
        Some(cert) => format!(
            "listen {listen} ssl;\n        ssl_protocols TLSv1.3;\n        \
             ssl_certificate {};\n        ssl_certificate_key {};",
            cert.cert_file.display(),
            cert.key_file.display()
        ),
        None => format!("listen {listen};"),
    };
    let root = root.display();
    let sendfile = if sendfile { "on" } else { "off" };
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    sendfile {sendfile};
    tcp_nopush {sendfile};
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    open_file_cache max=1000 inactive=60s;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy_temp;
    fastcgi_temp_path {root}/fastcgi_temp;
    uwsgi_temp_path {root}/uwsgi_temp;
    scgi_temp_path {root}/scgi_temp;
    proxy_cache_path {root}/cache levels=1:2 keys_zone=bench:10m max_size=256m inactive=1h use_temp_path=off;

    upstream origin {{
        server {origin};
        keepalive 16;
    }}

    server {{
        {ssl}
        server_name 127.0.0.1;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_cache bench;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"#
    )
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = StdListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
