//! What the kernel counts for us: bytes this process sent towards the disk, flushes the disk
//! completed, CPU time, context switches and memory in the page cache. Linux only, read from
//! `/proc`.

use std::fs;
use std::io;
use std::path::Path;

/// The block device a directory lives on, as `/proc/diskstats` names it (major, minor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    major: u32,
    minor: u32,
}

impl Device {
    /// The device holding `path`.
    pub fn of(path: &Path) -> io::Result<Device> {
        let st = rustix::fs::stat(path)?;
        let dev = st.st_dev;
        Ok(Device { major: rustix::fs::major(dev), minor: rustix::fs::minor(dev) })
    }
}

/// A reading of the counters a run is judged by; subtract two with [`Counters::since`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `write_bytes` of `/proc/self/io`: bytes this process caused to be sent to storage,
    /// O_DIRECT writes and dirtied page-cache pages alike (counted when dirtied, so a page
    /// rewritten before writeback counts once per dirtying).
    pub process_write_bytes: u64,
    /// Flush requests the device completed (every fdatasync that reaches the disk sends one).
    /// Device-wide: other processes' syncs count too.
    pub device_flushes: Option<u64>,
    /// Bytes the device wrote, device-wide.
    pub device_write_bytes: Option<u64>,
    /// User plus system CPU time of this process, all threads, in microseconds (the kernel
    /// counts it in clock ticks, usually 10 ms: read it over seconds, not milliseconds).
    pub process_cpu_us: Option<u64>,
    /// Context switches on the whole machine (`ctxt` of `/proc/stat`): every blocking wait and
    /// wake-up counts, ours and everyone else's.
    pub machine_context_switches: Option<u64>,
}

impl Counters {
    /// Reads the counters now. A missing or unreadable counter reads as zero or `None` rather
    /// than failing the benchmark.
    #[must_use]
    pub fn read(device: Device) -> Counters {
        let process_write_bytes = fs::read_to_string("/proc/self/io").ok().and_then(|io| field(&io, "write_bytes:")).unwrap_or(0);
        let (device_flushes, device_write_bytes) = disk_stats(device).unzip();
        let machine_context_switches = fs::read_to_string("/proc/stat").ok().and_then(|stat| field(&stat, "ctxt "));
        Counters { process_write_bytes, device_flushes, device_write_bytes, process_cpu_us: process_cpu_us(), machine_context_switches }
    }

    /// What happened between `earlier` and `self`.
    #[must_use]
    pub fn since(&self, earlier: &Counters) -> Counters {
        let diff = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        Counters {
            process_write_bytes: self.process_write_bytes.saturating_sub(earlier.process_write_bytes),
            device_flushes: diff(self.device_flushes, earlier.device_flushes),
            device_write_bytes: diff(self.device_write_bytes, earlier.device_write_bytes),
            process_cpu_us: diff(self.process_cpu_us, earlier.process_cpu_us),
            machine_context_switches: diff(self.machine_context_switches, earlier.machine_context_switches),
        }
    }
}

impl Counters {
    /// Two intervals' counts together (rounds of one system, see [`crate::Report::absorb`]).
    #[must_use]
    pub fn plus(&self, other: &Counters) -> Counters {
        let sum = |a: Option<u64>, b: Option<u64>| Some(a? + b?);
        Counters {
            process_write_bytes: self.process_write_bytes + other.process_write_bytes,
            device_flushes: sum(self.device_flushes, other.device_flushes),
            device_write_bytes: sum(self.device_write_bytes, other.device_write_bytes),
            process_cpu_us: sum(self.process_cpu_us, other.process_cpu_us),
            machine_context_switches: sum(self.machine_context_switches, other.machine_context_switches),
        }
    }
}

/// The number after `name` in a `name: value` text such as `/proc/self/io` or `/proc/meminfo`.
fn field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// (flushes completed, bytes written) of `device` from `/proc/diskstats`. The flush count is
/// the 16th statistic (Linux 5.5 and later); sectors there are always 512 bytes.
fn disk_stats(device: Device) -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/diskstats").ok()?;
    text.lines().find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let same = cols.first()?.parse() == Ok(device.major) && cols.get(1)?.parse() == Ok(device.minor);
        if !same {
            return None;
        }
        let stat = |n: usize| cols.get(2 + n)?.parse::<u64>().ok();
        Some((stat(16)?, stat(7)? * 512))
    })
}

/// utime + stime of `/proc/self/stat` in microseconds. The fields are counted after the command
/// name, which sits in parentheses and may itself hold spaces.
fn process_cpu_us() -> Option<u64> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let ticks = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    Some(ticks * 1_000_000 / rustix::param::clock_ticks_per_second())
}

/// The kernel's `Cached:` memory (page cache, including tmpfs) in bytes.
pub fn page_cache_bytes() -> io::Result<u64> {
    let text = fs::read_to_string("/proc/meminfo")?;
    field(&text, "Cached:").map(|kib| kib * 1024).ok_or_else(|| io::Error::other("no Cached: line in /proc/meminfo"))
}

/// Whether `path` is on tmpfs, where O_DIRECT and fdatasync cost nothing and mean nothing.
pub fn is_tmpfs(path: &Path) -> io::Result<bool> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    Ok(rustix::fs::statfs(path)?.f_type as i64 == TMPFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_their_name() {
        let meminfo = "MemTotal:       24000000 kB\nCached:          1234 kB\nSwapCached:  0 kB\n";
        assert_eq!(field(meminfo, "Cached:"), Some(1234));
        assert_eq!(field("write_bytes: 4096\n", "write_bytes:"), Some(4096));
        assert_eq!(field("", "Cached:"), None);
        assert_eq!(field("cpu  1 2 3\nctxt 987\nbtime 5\n", "ctxt "), Some(987));
    }
}
