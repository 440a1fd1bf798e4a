//! demo placeholder
pub async fn run(_c: &std::path::Path, _k: bool) -> anyhow::Result<()> { Ok(()) }
pub async fn simulate(_p: u16) -> anyhow::Result<()> { Ok(()) }
