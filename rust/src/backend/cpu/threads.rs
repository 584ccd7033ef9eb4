//! How many threads the CPU backend's pool gets by default: one per physical core.

use std::collections::HashSet;

/// The CPU backend's pool size when the user sets none: `RAYON_NUM_THREADS` where set (rayon's
/// own rule), else the physical cores (a second hyper-thread of a core shares its vector units
/// and only adds wake-ups to the small steps of a decode).
pub fn default_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(physical_cores)
}

/// The physical cores this process may run on: the logical CPUs it may use, counted once per
/// set of hyper-thread siblings (Linux: `/sys/devices/system/cpu/cpuN/topology/
/// thread_siblings_list`); elsewhere, or where that cannot be read, the logical CPUs.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Ok(online) = std::fs::read_to_string("/sys/devices/system/cpu/online") else {
        return logical;
    };
    let mut cores = HashSet::new();
    for cpu in cpu_list(online.trim()) {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
        match std::fs::read_to_string(path) {
            Ok(siblings) => cores.insert(siblings.trim().to_string()),
            Err(_) => return logical,
        };
    }
    // A cgroup or affinity mask may allow fewer CPUs than the machine has.
    cores.len().clamp(1, logical)
}

/// The CPUs of a Linux CPU list such as `0-3,8,10-11`; malformed parts are skipped.
fn cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let mut ends = part.splitn(2, '-').map(|v| v.trim().parse::<usize>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), None) => cpus.push(a),
            (Some(Ok(a)), Some(Ok(b))) if a <= b => cpus.extend(a..=b),
            _ => {}
        }
    }
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_linux_writes_them() {
        assert_eq!(cpu_list("0-3,8,10-11"), [0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(cpu_list("0"), [0]);
        assert_eq!(cpu_list("3-1,x,5"), [5]);
    }

    #[test]
    fn physical_cores_are_at_least_one_and_at_most_the_logical_cpus() {
        let n = physical_cores();
        let logical = std::thread::available_parallelism().unwrap().get();
        assert!((1..=logical).contains(&n), "{n} of {logical}");
    }
}
