//! The printed table and the machine line.

#[derive(Default)]
pub struct Table {
    rows: Vec<[String; 6]>,
}

/// Whether a figure met its goal: None when it has none (or the run was scaled down).
pub type Verdict = Option<bool>;

impl Table {
    pub fn section(&mut self, title: &str) {
        self.rows.push([
            format!("## {title}"),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }

    /// One figure: what, dimple's value, the baseline's value, the ratio, the goal, met.
    pub fn row(&mut self, what: &str, dimple: String, baseline: String, ratio: String, goal: &str, ok: Verdict) {
        let ok = match ok {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        self.rows.push([what.to_owned(), dimple, baseline, ratio, goal.to_owned(), ok.to_owned()]);
    }

    pub fn note(&mut self, text: &str) {
        self.rows.push([
            format!("  {text}"),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }

    pub fn print(&self) {
        let head = ["figure", "dimple", "baseline", "ratio", "goal", "met"];
        let mut w = head.map(str::len);
        for r in self.rows.iter().filter(|r| !is_wide(r)) {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |r: &[String; 6]| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| if i == 0 { format!("{c:<0$}", w[0]) } else { format!("{c:>0$}", w[i]) })
                .collect();
            println!("{}", cells.join("  ").trim_end());
        };
        line(&head.map(str::to_owned));
        println!("{}", "-".repeat(w.iter().sum::<usize>() + 2 * (w.len() - 1)));
        for r in &self.rows {
            if is_wide(r) {
                println!("{}", r[0]);
            } else {
                line(r);
            }
        }
    }
}

fn is_wide(r: &[String; 6]) -> bool {
    r[1..].iter().all(String::is_empty)
}

pub fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M/s", per_s / 1e6)
    } else {
        format!("{:.0} k/s", per_s / 1e3)
    }
}

pub fn secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.0} ms", s * 1e3)
    }
}

/// CPU model and core count, from /proc/cpuinfo and the scheduler.
pub fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .map(|kb| format!(", {:.1} GB RAM", kb as f64 / 1048576.0))
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            l.split_whitespace()
                .next()
                .map(|x| format!("; load average {x} at start (shared machine: wall-clock figures suffer)"))
        })
        .unwrap_or_default();
    format!("{model}, {cores} cores available{mem}; {} {}{load}", std::env::consts::OS, std::env::consts::ARCH)
}
