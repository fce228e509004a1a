//! Benchmark probes, the same for every VMM: launch a VMM and time its guest from outside, sample
//! its memory at an idle guest, count host invalidation ioctls and guest vSMMU command-queue writes
//! with L1 kernel tracepoints, and time O_DIRECT reads inside the guest.
//!
//! Nothing here asks the VMM under test for a figure: a VMM is a command line whose standard output
//! is the guest console.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `IOMMU_HWPT_INVALIDATE` = _IO(';', 0x80 + 0x0d) (include/uapi/linux/iommufd.h).
const IOMMU_HWPT_INVALIDATE: u64 = 0x3b8d;
/// `KVM_RUN` = _IO(0xae, 0x80).
const KVM_RUN: u64 = 0xae80;
/// SMMUv3 page-0 registers the guest writes to drive its command queue.
const SMMU_CMDQ_BASE: u64 = 0x90;
const SMMU_CMDQ_PROD: u64 = 0x98;
/// Guest console markers the lab's L2 scripts print.
const MARK_INIT: &str = "@@LAB L2 up";
const MARK_IDLE: &str = "@@BENCH idle";
const MARK_WORK_BEGIN: &str = "@@BENCH workload begin";
const MARK_WORK_END: &str = "@@BENCH workload end";
/// How long the guest has been idle when the VMM's memory is sampled.
const IDLE_SETTLE: Duration = Duration::from_millis(1500);

const TRACEFS: &str = "/sys/kernel/tracing";

/// One tracefs instance: its own buffer, events and filters, so the probes never disturb each
/// other or anything else tracing in L1.
struct TraceInstance {
    dir: PathBuf,
}

impl TraceInstance {
    fn create(name: &str, buffer_kb: u32) -> Result<Self, String> {
        let root = PathBuf::from(TRACEFS);
        if !root.join("instances").is_dir() {
            return Err(format!(
                "{TRACEFS} is not mounted (mount -t tracefs nodev {TRACEFS})"
            ));
        }
        let dir = root.join("instances").join(name);
        if dir.exists() {
            fs::remove_dir(&dir).map_err(|e| format!("removing stale {}: {e}", dir.display()))?;
        }
        fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let t = TraceInstance { dir };
        t.write("tracing_on", "0")?;
        t.write("trace_clock", "mono")?;
        t.write("buffer_size_kb", &buffer_kb.to_string())?;
        // A full buffer drops new events instead of overwriting the first ones: counts are exact
        // or the run says it lost events.
        t.write("options/overwrite", "0")?;
        Ok(t)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let path = self.dir.join(file);
        fs::write(&path, value).map_err(|e| format!("writing '{value}' to {}: {e}", path.display()))
    }

    fn event(&self, event: &str, filter: &str) -> Result<(), String> {
        self.write(&format!("events/{event}/filter"), filter)?;
        self.write(&format!("events/{event}/enable"), "1")
    }

    fn on(&self, on: bool) -> Result<(), String> {
        self.write("tracing_on", if on { "1" } else { "0" })
    }

    fn read(&self) -> Result<String, String> {
        fs::read_to_string(self.dir.join("trace")).map_err(|e| format!("reading the trace: {e}"))
    }

    /// Events the buffer had no room for, summed over CPUs.
    fn dropped(&self) -> u64 {
        let Ok(cpus) = fs::read_dir(self.dir.join("per_cpu")) else {
            return 0;
        };
        cpus.flatten()
            .filter_map(|c| fs::read_to_string(c.path().join("stats")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.strip_prefix("dropped events: "))
                    .filter_map(|v| v.trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }
}

impl Drop for TraceInstance {
    fn drop(&mut self) {
        let _ = self.on(false);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// CLOCK_MONOTONIC in seconds, the clock of `trace_clock=mono`.
fn monotonic_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The timestamp (seconds) of a trace line: `  comm-pid  [cpu] flags  1234.567890: event: ...`.
fn trace_time(line: &str) -> Option<f64> {
    let (head, _) = line.split_once(": ")?;
    head.rsplit(' ').next()?.parse().ok()
}

/// The kernel's printk timestamp of a console line, `[    1.234567] ...`.
fn printk_time(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (ts, _) = rest.split_once(']')?;
    let (secs, micros) = ts.trim_start().split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(secs) && micros.len() == 6 && digits(micros))
        .then(|| ts.trim().parse().ok())
        .flatten()
}

/// A console line as the lines that were written: a guest kernel printing its log from a thread
/// (Linux's PL011 console) can put a whole record between a program's text and its newline, so
/// a record starting mid-line begins a line of its own.
fn split_records(line: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (at, _) in line.match_indices('[') {
        if at > start && printk_time(&line[at..]).is_some() {
            parts.push(&line[start..at]);
            start = at;
        }
    }
    parts.push(&line[start..]);
    parts
}

/// Resident memory of a process: in total and in its guest-RAM mappings (anonymous mappings whose
/// size is the guest's RAM, give or take the few MiB a VMM may add for alignment or guards).
fn resident_kib(pid: u32, guest_mib: u64) -> Result<(u64, u64), String> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("reading /proc/{pid}/smaps: {e}"))?;
    let guest_kib = guest_mib << 10;
    let (mut total, mut guest) = (0, 0);
    let mut size = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Size:"), Some(v)) => size = v.parse().unwrap_or(0),
            (Some("Rss:"), Some(v)) => {
                let rss: u64 = v.parse().unwrap_or(0);
                total += rss;
                if size >= guest_kib && size <= guest_kib + (4 << 10) {
                    guest += rss;
                }
            }
            _ => {}
        }
    }
    Ok((total, guest))
}

/// What the trace of one workload window says about the guest's command queues and the host's
/// invalidation ioctls.
#[derive(Default, Debug, PartialEq)]
struct QueueCounts {
    invalidate_ioctls: u64,
    /// CMDQ_PROD writes: one per command batch, which Linux ends with its CMD_SYNC.
    prod_writes: u64,
    /// Commands the guest queued: the sum of PROD advances.
    commands: u64,
}

/// Counts from the trace text, for the vSMMUs at `bases` (their register page 0).
fn count_queue_events(trace: &str, bases: &[u64]) -> QueueCounts {
    let mut counts = QueueCounts::default();
    // Per vSMMU: queue size (log2, from CMDQ_BASE) and the last PROD value.
    let mut log2size: BTreeMap<u64, u32> = BTreeMap::new();
    let mut prod: BTreeMap<u64, u64> = BTreeMap::new();
    for line in trace.lines().filter(|l| !l.starts_with('#')) {
        if let Some(rest) = line.split_once("sys_ioctl(").map(|(_, r)| r) {
            // Syscall events print their arguments in hex, with or without a 0x prefix.
            let cmd = rest.split_once("cmd: ").and_then(|(_, v)| {
                let v = v.split([',', ')']).next()?;
                u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()
            });
            if cmd == Some(IOMMU_HWPT_INVALIDATE) {
                counts.invalidate_ioctls += 1;
            }
            continue;
        }
        let Some(rest) = line.split_once("kvm_mmio: mmio write ").map(|(_, r)| r) else {
            continue;
        };
        let (Some(gpa), Some(val)) = (field(rest, "gpa"), field(rest, "val")) else {
            continue;
        };
        let Some(&base) = bases.iter().find(|&&b| gpa >= b && gpa < b + 0x1_0000) else {
            continue;
        };
        match gpa - base {
            SMMU_CMDQ_BASE => {
                log2size.insert(base, (val & 0x1f) as u32);
            }
            SMMU_CMDQ_PROD => {
                counts.prod_writes += 1;
                // The first write in the window only sets where the queue stood.
                if let Some(old) = prod.insert(base, val) {
                    counts.commands += prod_advance(old, val, log2size.get(&base).copied());
                }
            }
            _ => {}
        }
    }
    counts
}

/// Commands between two CMDQ_PROD values. PROD is the queue index with the wrap bit right above
/// it, an (n+1)-bit counter for a queue of 2^n entries. Without the queue size (CMDQ_BASE was
/// written before the trace started) it still follows: a value below the previous one means the
/// wrap bit went from 1 to 0, and with the wrap bit set the previous value's top bit is it.
fn prod_advance(old: u64, new: u64, log2size: Option<u32>) -> u64 {
    match log2size {
        Some(n) => new.wrapping_sub(old) & ((2u64 << n) - 1),
        None if new >= old => new - old,
        None => {
            let period = (old + 1).next_power_of_two();
            new + period - old
        }
    }
}

/// The value after `name` in a trace line: `name 0x1f` (hex) or `name 31` (decimal).
fn field(text: &str, name: &str) -> Option<u64> {
    let mut words = text.split(' ');
    while let Some(w) = words.next() {
        if w == name {
            let v = words.next()?;
            return match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            };
        }
    }
    None
}

/// Exits by kind (the exception class KVM names) and MMIO accesses by 4 KiB page, as JSON.
fn exit_summary(trace: &str, dropped: u64) -> String {
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut pages: BTreeMap<String, u64> = BTreeMap::new();
    for line in trace.lines().filter(|l| !l.starts_with('#')) {
        if let Some((_, rest)) = line.split_once("kvm_exit: ") {
            let kind = rest
                .split_once('(')
                .and_then(|(_, k)| k.split_once(')'))
                .map_or("?", |(k, _)| k);
            *kinds.entry(kind.to_string()).or_default() += 1;
        } else if let Some((_, rest)) = line.split_once("kvm_mmio: mmio ") {
            let dir = rest.split(' ').next().unwrap_or("?");
            if let Some(gpa) = field(rest, "gpa") {
                *pages
                    .entry(format!("{dir} {:#x}", gpa & !0xfff))
                    .or_default() += 1;
            }
        }
    }
    let mut top: Vec<_> = pages.into_iter().collect();
    top.sort_by_key(|b| std::cmp::Reverse(b.1));
    let obj = |items: &mut dyn Iterator<Item = (String, u64)>| {
        items
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "{{\"dropped\":{dropped},\"kinds\":{{{}}},\"mmio_pages\":{{{}}}}}",
        obj(&mut kinds.into_iter()),
        obj(&mut top.into_iter().take(8))
    )
}

/// The vSMMU register base a guest names its SMMU by: `smmu3.0x000000000a000000`.
fn smmu_base(line: &str) -> Option<u64> {
    let at = line.find("smmu3.0x")? + "smmu3.0x".len();
    let hex: String = line[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&hex, 16).ok()
}

/// `labcheck vmm-run VMM:CASE GUEST_MIB -- CMD...`: runs a VMM, echoes its guest console as `L2| `
/// lines, and prints one `@@BENCH run {json}` line with what it measured.
pub fn vmm_run(args: &[String]) -> Result<(), String> {
    let usage = "usage: labcheck vmm-run VMM:CASE GUEST_MIB -- CMD [ARG...]";
    let (name, guest_mib, cmd) = match args {
        [name, mib, dashdash, cmd @ ..] if dashdash == "--" && !cmd.is_empty() => (
            name.as_str(),
            mib.parse::<u64>()
                .map_err(|_| format!("bad GUEST_MIB '{mib}'; {usage}"))?,
            cmd,
        ),
        _ => return Err(usage.into()),
    };
    // The first KVM_RUN of the process: a small buffer that keeps its first events.
    let start_trace = TraceInstance::create("bench-kvm-run", 64)?;
    start_trace.event("syscalls/sys_enter_ioctl", &format!("cmd == {KVM_RUN:#x}"))?;
    // The workload window: host invalidations and guest writes to vSMMU registers.
    let work_trace = TraceInstance::create("bench-queue", 16 << 10)?;
    work_trace.event(
        "syscalls/sys_enter_ioctl",
        &format!("cmd == {IOMMU_HWPT_INVALIDATE:#x}"),
    )?;
    work_trace.event("kvm/kvm_mmio", "type == 2")?;

    // Optional (BENCH_EXITS=1): every guest exit of the run, by kind and by MMIO page. It costs
    // the guest a little time per exit, so the timing runs leave it off.
    let exit_trace = if std::env::var_os("BENCH_EXITS").is_some_and(|v| v == "1") {
        let t = TraceInstance::create("bench-exits", 96 << 10)?;
        t.event("kvm/kvm_exit", "")?;
        t.event("kvm/kvm_mmio", "")?;
        t.on(true)?;
        Some(t)
    } else {
        None
    };
    start_trace.on(true)?;
    let t0_mono = monotonic_now();
    let t0 = Instant::now();
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", cmd[0]))?;
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1e3;

    let mut result: BTreeMap<&str, String> = BTreeMap::new();
    let mut bases = Vec::new();
    let mut first_kernel_line = None;
    let mut guest_kernel_to_init = None;
    let mut init_at = None;
    let stdout = std::io::stdout();
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let n = out
            .read_until(b'\n', &mut raw)
            .map_err(|e| format!("reading the guest console: {e}"))?;
        if n == 0 {
            break;
        }
        let now = Instant::now();
        let text = String::from_utf8_lossy(&raw);
        for line in split_records(text.trim_end_matches(['\r', '\n'])) {
            {
                let mut o = stdout.lock();
                let _ = writeln!(o, "L2| {line}");
            }
            result
                .entry("launch_to_console_ms")
                .or_insert_with(|| format!("{:.0}", ms(now)));
            if let Some(ts) = printk_time(line) {
                first_kernel_line.get_or_insert(now);
                if line.contains("Run /init as init process") {
                    guest_kernel_to_init = Some(ts);
                }
            }
            if let Some(base) = smmu_base(line)
                && line.contains("lab-l2: iommu ")
                && !bases.contains(&base)
            {
                bases.push(base);
            }
            if line.starts_with(MARK_INIT) {
                init_at = Some(now);
                result.insert("launch_to_init_ms", format!("{:.0}", ms(now)));
            } else if line.starts_with(MARK_IDLE) {
                std::thread::sleep(IDLE_SETTLE);
                let (total, guest) = resident_kib(pid, guest_mib)?;
                result.insert("rss_kib", total.to_string());
                result.insert("guest_ram_rss_kib", guest.to_string());
                result.insert("overhead_kib", total.saturating_sub(guest).to_string());
            } else if line.starts_with(MARK_WORK_BEGIN) {
                work_trace.on(true)?;
            } else if line.starts_with(MARK_WORK_END) {
                work_trace.on(false)?;
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {}: {e}", cmd[0]))?;
    start_trace.on(false)?;
    work_trace.on(false)?;

    // The guest kernel's clock starts with the kernel: init's start (its first console line)
    // minus the kernel's own timestamp for starting init is when the kernel started, after
    // whatever ran before it (VMM, firmware). The first kernel line is no good for this: a
    // console registered late prints its backlog late.
    if let (Some(ts), Some(init)) = (guest_kernel_to_init, init_at) {
        result.insert("guest_kernel_to_init_ms", format!("{:.0}", ts * 1e3));
        result.insert("launch_to_kernel_ms", format!("{:.0}", ms(init) - ts * 1e3));
    }
    if let Some(at) = first_kernel_line {
        result.insert("launch_to_kernel_line_ms", format!("{:.0}", ms(at)));
    }
    let first_run = start_trace
        .read()?
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(trace_time)
        .find(|&t| t >= t0_mono);
    if let Some(t) = first_run {
        result.insert(
            "start_to_first_kvm_run_ms",
            format!("{:.1}", (t - t0_mono) * 1e3),
        );
    }
    let trace = work_trace.read()?;
    let counts = count_queue_events(&trace, &bases);
    // One raw ioctl event, so a format change in the kernel's trace output cannot hide as a zero.
    if let Some(sample) = trace.lines().find(|l| l.contains("sys_ioctl(")) {
        println!("@@BENCH trace sample: {}", sample.trim());
    }
    if !bases.is_empty() {
        result.insert("invalidate_ioctls", counts.invalidate_ioctls.to_string());
        result.insert("guest_cmdq_batches", counts.prod_writes.to_string());
        result.insert("guest_commands", counts.commands.to_string());
        result.insert("trace_dropped", work_trace.dropped().to_string());
    }
    if let Some(t) = exit_trace {
        t.on(false)?;
        result.insert("exits", exit_summary(&t.read()?, t.dropped()));
    }
    result.insert("exit_status", status.code().unwrap_or(-1).to_string());
    let (vmm, case) = name.split_once(':').unwrap_or((name, ""));
    let json: Vec<String> = [format!("\"vmm\":\"{vmm}\""), format!("\"case\":\"{case}\"")]
        .into_iter()
        .chain(result.iter().map(|(k, v)| format!("\"{k}\":{v}")))
        .collect();
    println!("@@BENCH run {{{}}}", json.join(","));
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} exited with {status}"))
    }
}

/// `labcheck read-bench DEV BLOCK [BYTES]`: sequential O_DIRECT reads, timed.
pub fn read_bench(args: &[String]) -> Result<(), String> {
    let usage = "usage: labcheck read-bench DEV BLOCK_BYTES [TOTAL_BYTES]";
    let (dev, block, limit) = match args {
        [dev, block] => (dev, block, None),
        [dev, block, total] => (dev, block, Some(total)),
        _ => return Err(usage.into()),
    };
    let block: usize = block
        .parse()
        .map_err(|_| format!("bad block size; {usage}"))?;
    let limit: Option<u64> = limit
        .map(|t| t.parse().map_err(|_| format!("bad total; {usage}")))
        .transpose()?;
    if block == 0 || !block.is_multiple_of(4096) {
        return Err(format!("block size {block} is not a multiple of 4096"));
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(|e| format!("opening {dev} with O_DIRECT: {e}"))?;
    // The buffer sits in 2 MiB huge pages where the guest has them: physically contiguous, so
    // each request is one DMA segment and the same number of maps and unmaps under any VMM,
    // whatever the guest's memory looked like before.
    const HUGE: usize = 2 << 20;
    let span = block.div_ceil(HUGE) * HUGE + HUGE;
    // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(format!(
            "mapping a {span}-byte buffer: {}",
            std::io::Error::last_os_error()
        ));
    }
    let aligned = (map as usize).next_multiple_of(HUGE);
    // SAFETY: [aligned, aligned + block) lies inside the mapping made above, which stays until
    // the munmap below; madvise is only a hint.
    let buf = unsafe {
        libc::madvise(
            aligned as *mut libc::c_void,
            span - (aligned - map as usize),
            libc::MADV_HUGEPAGE,
        );
        std::slice::from_raw_parts_mut(aligned as *mut u8, block)
    };
    buf.fill(0);
    let t0 = Instant::now();
    let mut total = 0u64;
    let outcome = loop {
        if limit.is_some_and(|l| total >= l) {
            break Ok(());
        }
        match file.read(buf) {
            Ok(0) => break Ok(()),
            Ok(n) => total += n as u64,
            Err(e) => break Err(format!("reading {dev}: {e}")),
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    // SAFETY: the mapping made above, unmapped once; `buf` is not used after this.
    unsafe { libc::munmap(map, span) };
    outcome?;
    println!(
        "@@BENCH read {{\"dev\":\"{dev}\",\"block\":{block},\"bytes\":{total},\"ms\":{:.1},\"mib_s\":{:.2}}}",
        secs * 1e3,
        total as f64 / (1 << 20) as f64 / secs
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_queue_writes_and_ioctls_of_the_named_smmus_only() {
        let trace = "\
# tracer: nop
 microvmm-1  [000] .....  10.000100: kvm_mmio: mmio write len 8 gpa 0xa000090 val 0x800000000400000a
 vcpu0-1  [000] .....  10.000200: kvm_mmio: mmio write len 4 gpa 0xa000098 val 0x3
 vcpu0-1  [000] .....  10.000300: sys_ioctl(fd: 5, cmd: 3b8d, arg: ffff)
 vcpu0-1  [000] .....  10.000400: kvm_mmio: mmio write len 4 gpa 0xa000098 val 0x405
 vcpu0-1  [000] .....  10.000500: kvm_mmio: mmio write len 4 gpa 0x3fff0098 val 0x9
 vcpu0-1  [000] .....  10.000600: kvm_mmio: mmio write len 4 gpa 0xa100098 val 0x2
 vcpu0-1  [000] .....  10.000700: sys_ioctl(fd: 5, cmd: ae80, arg: 0)
 vcpu0-1  [000] .....  10.000750: sys_ioctl(fd: 0x5, cmd: 0x3b8d, arg: 0xffff)
 vcpu0-1  [000] .....  10.000800: kvm_mmio: mmio write len 4 gpa 0xa000098 val 0x1
";
        let c = count_queue_events(trace, &[0xa00_0000, 0xa10_0000]);
        // Queue of 2^10 entries: 3 (where it stood) -> 0x405 (wrapped: +1026) -> 0x1 (wrap bit
        // back: +1020); the other vSMMU's one write only says where its queue stood.
        assert_eq!(
            c,
            QueueCounts {
                invalidate_ioctls: 2,
                prod_writes: 4,
                commands: 1026 + 1020,
            }
        );
    }

    #[test]
    fn splits_kernel_records_written_mid_line() {
        assert_eq!(
            split_records("lab-l2: iommus 2[    0.917693] pci x[    1.000000] y"),
            [
                "lab-l2: iommus 2",
                "[    0.917693] pci x",
                "[    1.000000] y"
            ]
        );
        assert_eq!(split_records("a [b] c [1.5] d"), ["a [b] c [1.5] d"]);
    }

    #[test]
    fn prod_advances_follow_the_wrap_bit_with_or_without_the_queue_size() {
        // A 2^4-entry queue: index 14 -> wrapped index 2 (wrap bit 16 set) -> unwrapped index 1.
        assert_eq!(prod_advance(14, 16 + 2, Some(4)), 4);
        assert_eq!(prod_advance(16 + 14, 1, Some(4)), 3);
        assert_eq!(prod_advance(14, 16 + 2, None), 4);
        assert_eq!(prod_advance(16 + 14, 1, None), 3);
        assert_eq!(prod_advance(5, 5, None), 0);
    }

    #[test]
    fn parses_console_and_trace_times() {
        assert_eq!(
            printk_time("[    1.250000] Run /init as init process"),
            Some(1.25)
        );
        assert_eq!(printk_time("lab-l2: up"), None);
        assert_eq!(
            trace_time(" vcpu0-77  [001] .....  123.456789: sys_ioctl(fd: 9, cmd: ae80)"),
            Some(123.456789)
        );
        assert_eq!(
            smmu_base("lab-l2: iommu smmu3.0x000000000a100000: 0001:00:00.0"),
            Some(0xa10_0000)
        );
    }
}
