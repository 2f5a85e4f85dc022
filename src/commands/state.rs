use crate::cli::GlobalOpts;
use crate::error::Result;
use crate::lifecycle;
use crate::state::Store;

pub fn run(global: &GlobalOpts, id: &str) -> Result<i32> {
    let store = Store::open(&global.root)?;
    let record = lifecycle::load(&store, id)?;
    let state = record.oci_state(lifecycle::status(&store, &record));
    println!(
        "{}",
        serde_json::to_string_pretty(&state).expect("state serializes")
    );
    Ok(0)
}
