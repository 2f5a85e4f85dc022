//! `generate man|completions DIR` (hidden): what scripts/package.sh ships,
//! made from the parser itself (src/manual.rs).

use crate::cli::{GenerateArgs, GenerateWhat};
use crate::error::{Error, Result};
use crate::manual;

pub fn run(args: &GenerateArgs) -> Result<i32> {
    let files = match args.what {
        GenerateWhat::Man => manual::man_pages(),
        GenerateWhat::Completions => Ok(manual::completions()),
    };
    files
        .and_then(|f| manual::write(&args.dir, &f))
        .map_err(|source| Error::Io {
            path: args.dir.clone(),
            source,
        })?;
    Ok(0)
}
