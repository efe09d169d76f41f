//! Which processes are traced: explicit pids and their descendants, and
//! processes whose executable path or command line matches a regex. Decisions
//! are cached per pid (bounded) and re-made on exec.

use std::collections::{HashMap, HashSet};

use regex::Regex;

use crate::enrich::process::ProcInfo;

/// Max cached decisions before the cache is cleared.
const MAX_DECISIONS: usize = 65_536;

/// Map updates the kernel must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelUpdate {
    Select(u32),
    Unselect(u32),
}

pub struct Selector {
    all: bool,
    roots: HashSet<u32>,
    exe: Vec<Regex>,
    decided: HashMap<u32, bool>,
    pub updates: Vec<KernelUpdate>,
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

impl Selector {
    pub fn new(all: bool, pids: &[u32], exe: &[String]) -> Result<Self, regex::Error> {
        let exe =
            exe.iter().map(|r| regex::RegexBuilder::new(r).size_limit(1 << 20).build()).collect::<Result<_, _>>()?;
        Ok(Self { all, roots: pids.iter().copied().collect(), exe, decided: HashMap::new(), updates: Vec::new() })
    }

    fn matches_exe(&self, p: &ProcInfo) -> bool {
        self.exe.iter().any(|re| re.is_match(&p.exe_path) || re.is_match(&p.cmdline))
    }

    fn descends_from_root(&self, pid: u32) -> bool {
        let mut cur = pid;
        for _ in 0..64 {
            if self.roots.contains(&cur) || self.decided.get(&cur) == Some(&true) && cur != pid {
                return true;
            }
            match parent_of(cur) {
                Some(p) if p > 1 => cur = p,
                _ => return false,
            }
        }
        false
    }

    fn decide(&mut self, pid: u32) -> bool {
        if self.all {
            return true;
        }
        let yes = self.roots.contains(&pid)
            || ProcInfo::read(pid).is_some_and(|p| self.matches_exe(&p))
            || self.descends_from_root(pid);
        if self.decided.len() >= MAX_DECISIONS {
            self.decided.clear();
        }
        self.decided.insert(pid, yes);
        self.updates.push(if yes { KernelUpdate::Select(pid) } else { KernelUpdate::Unselect(pid) });
        yes
    }

    /// Whether events of `tgid` are wanted.
    pub fn allows(&mut self, tgid: u32) -> bool {
        if self.all {
            return true;
        }
        match self.decided.get(&tgid) {
            Some(v) => *v,
            None => self.decide(tgid),
        }
    }

    /// A process exec'd: its identity changed, decide again.
    pub fn on_exec(&mut self, tgid: u32) -> bool {
        if self.all {
            return true;
        }
        self.decided.remove(&tgid);
        self.decide(tgid)
    }

    pub fn on_exit(&mut self, tgid: u32) {
        self.decided.remove(&tgid);
    }

    /// Processes selected now (every live process when tracing all); for
    /// rescans such as TLS library discovery.
    pub fn selected(&self) -> Vec<u32> {
        if self.all {
            let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
            return dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        }
        self.decided.iter().filter(|(_, yes)| **yes).map(|(pid, _)| *pid).collect()
    }

    /// Processes already running that are selected (for seeding the kernel map).
    pub fn initial(&mut self) -> Vec<u32> {
        if self.all {
            return Vec::new();
        }
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        let pids: Vec<u32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        let selected: Vec<u32> = pids.into_iter().filter(|p| self.decide(*p)).collect();
        self.updates.clear();
        selected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_selects_everything_without_updates() {
        let mut s = Selector::new(true, &[], &[]).unwrap();
        assert!(s.allows(12345));
        assert!(s.updates.is_empty());
    }

    #[test]
    fn pid_selects_itself_and_children() {
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let mut s = Selector::new(false, &[me], &[]).unwrap();
        assert!(s.allows(me));
        assert!(s.allows(child.id()), "a child of a selected pid is selected");
        assert!(!s.allows(1), "init is not");
        assert!(s.updates.contains(&KernelUpdate::Select(child.id())));
        let selected = s.selected();
        assert!(selected.contains(&me) && selected.contains(&child.id()) && !selected.contains(&1), "{selected:?}");
        child.kill().ok();
        child.wait().ok();
    }

    #[test]
    fn exe_regex_matches_path_or_command_line() {
        let mut child = std::process::Command::new("sleep").arg("7.25").spawn().unwrap();
        let mut s = Selector::new(false, &[], &["sleep 7\\.25".into()]).unwrap();
        assert!(s.allows(child.id()));
        let mut s = Selector::new(false, &[], &["/nonexistent-binary$".into()]).unwrap();
        assert!(!s.allows(child.id()));
        assert_eq!(s.updates, vec![KernelUpdate::Unselect(child.id())]);
        let selected = Selector::new(false, &[], &["sleep 7\\.25".into()]).unwrap().initial();
        assert!(selected.contains(&child.id()));
        child.kill().ok();
        child.wait().ok();
    }
}
