//! What the profiler reads from `/proc/PID`: a process's mappings, and its
//! start time, which tells a process from a later one that got its pid.

/// One line of /proc/PID/maps.
pub struct MapsLine<'a> {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub exec: bool,
    /// `start-end` as written: the name of its `/proc/PID/map_files` entry.
    pub range: &'a str,
    /// The file, a `[special]` name, or empty for anonymous memory.
    pub path: String,
}

/// `start-end perms offset dev inode path`.
pub fn parse_maps_line(line: &str) -> Option<MapsLine<'_>> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?;
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let _inode = it.next()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (a, b) = range.split_once('-')?;
    Some(MapsLine {
        start: u64::from_str_radix(a, 16).ok()?,
        end: u64::from_str_radix(b, 16).ok()?,
        offset,
        exec: perms.as_bytes().get(2) == Some(&b'x'),
        range,
        path,
    })
}

/// Field 22 of /proc/PID/stat: the start time in clock ticks since boot.
/// The command name (field 2) may hold spaces and parentheses, so fields
/// are counted from the last `)`.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow the name; the start time is the 20th of them.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Does `pid` still belong to the process that started at `start_ns`
/// (nanoseconds since boot, as the kernel's `start_boottime`)?
pub fn same_process(pid: u32, start_ns: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    parse_start_ticks(&stat).is_some_and(|ticks| ticks == ns_to_ticks(start_ns))
}

/// Nanoseconds to clock ticks, as the kernel rounds them for /proc (down).
fn ns_to_ticks(ns: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    ns / (1_000_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse() {
        let l = "55d0c0a00000-55d0c0a21000 r-xp 00002000 fd:01 1234   /usr/bin/true";
        let m = parse_maps_line(l).unwrap();
        assert_eq!(
            (m.start, m.end, m.offset),
            (0x55d0c0a00000, 0x55d0c0a21000, 0x2000)
        );
        assert!(m.exec);
        assert_eq!(m.path, "/usr/bin/true");
        assert_eq!(m.range, "55d0c0a00000-55d0c0a21000");
        let anon = parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 ").unwrap();
        assert!(!anon.exec);
        assert_eq!(anon.path, "");
    }

    #[test]
    fn start_time_is_field_22_even_with_a_strange_name() {
        let stat = "4242 (a b) c)) R 1 4242 4242 0 -1 4194560 96 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 2351104 220 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks("1 (x) R 0"), None);
    }

    #[test]
    fn our_own_start_time_matches_and_another_does_not() {
        // The kernel's start_boottime is not readable from here; the
        // ticks /proc gives back, turned into ns, land in the same tick.
        let pid = std::process::id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ticks = parse_start_ticks(&stat).unwrap();
        // SAFETY: sysconf has no preconditions.
        let tick_ns = 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert!(same_process(pid, ticks * tick_ns + tick_ns / 2));
        assert!(!same_process(pid, (ticks + 1) * tick_ns));
    }
}
