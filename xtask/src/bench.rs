//! Benchmarks (filled in below).
use anyhow::Result;

pub fn bench(_args: &[String]) -> Result<()> {
    anyhow::bail!("not yet")
}
