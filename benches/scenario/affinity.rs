//! CPU pinning (threads via `sched_setaffinity`, child processes via `taskset`), the kernel
//! id of the calling thread, and CPU time read from `/proc/.../stat`.

use std::path::Path;
use std::process::Command;

/// The CPUs this process may run on, in order.
#[cfg(target_os = "linux")]
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most `size` bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`; false when that is not possible.
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpu: usize) -> bool {
    // SAFETY: as above; pid 0 means the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The kernel id of the calling thread.
#[cfg(target_os = "linux")]
pub fn current_tid() -> Option<i64> {
    // SAFETY: gettid has no arguments and cannot fail.
    Some(unsafe { libc::syscall(libc::SYS_gettid) } as i64)
}

/// User plus system CPU time used so far, from a `/proc/.../stat` file.
#[cfg(target_os = "linux")]
pub fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    // Fields after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt
    // cmajflt utime stime ...
    let mut fields = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// Busy and total time of one CPU so far, in ticks, from `/proc/stat` (busy = everything
/// but idle and iowait).
#[cfg(target_os = "linux")]
pub fn cpu_ticks(cpu: usize) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let label = format!("cpu{cpu}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))?;
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// How busy a CPU was between two `cpu_ticks` readings (0.0 to 1.0).
pub fn busy_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    match (before, after) {
        (Some((busy_a, total_a)), Some((busy_b, total_b))) if total_b > total_a => {
            Some(busy_b.saturating_sub(busy_a) as f64 / (total_b - total_a) as f64)
        }
        _ => None,
    }
}

#[cfg(not(target_os = "linux"))]
pub fn cpu_ticks(_cpu: usize) -> Option<(u64, u64)> {
    None
}

#[cfg(not(target_os = "linux"))]
pub fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

#[cfg(not(target_os = "linux"))]
pub fn current_tid() -> Option<i64> {
    None
}

#[cfg(not(target_os = "linux"))]
pub fn cpu_seconds(_stat_path: &str) -> Option<f64> {
    None
}

#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpu: usize) -> bool {
    false
}

/// CPU seconds used so far by the given threads of this process (those still alive).
pub fn threads_cpu_seconds(tids: &[i64]) -> Option<f64> {
    let pid = std::process::id();
    let times: Vec<f64> = tids
        .iter()
        .filter_map(|tid| cpu_seconds(&format!("/proc/{pid}/task/{tid}/stat")))
        .collect();
    (!times.is_empty()).then(|| times.iter().sum())
}

/// A command, prefixed with `taskset -c CPU` when both are available.
pub fn pinned_command(program: &Path, cpu: Option<usize>, taskset: Option<&Path>) -> Command {
    match (cpu, taskset) {
        (Some(cpu), Some(taskset)) => {
            let mut command = Command::new(taskset);
            command.arg("-c").arg(cpu.to_string()).arg(program);
            command
        }
        _ => Command::new(program),
    }
}
