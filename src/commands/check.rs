//! `check`: a preflight of the node (src/preflight.rs).

use std::path::Path;

use crate::cli::{CheckArgs, CheckFormat, GlobalOpts};
use crate::error::Result;
use crate::{preflight, router};

pub fn run(global: &GlobalOpts, args: &CheckArgs) -> Result<i32> {
    let settings = router::load_settings()?;
    let backend = router::open_default(&settings, &global.root)?;
    let checks = preflight::run(&global.root, Path::new("/sys/fs/cgroup"), &*backend);
    match args.format {
        CheckFormat::Text => print!("{}", preflight::text(&checks)),
        CheckFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&checks).expect("checks serialize")
        ),
    }
    Ok(preflight::exit_code(&checks))
}
