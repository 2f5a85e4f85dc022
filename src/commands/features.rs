use crate::cli::GlobalOpts;
use crate::features;
use crate::router;

/// The default backend's features: a delegate's own document when the
/// router's default is one.
pub fn run(global: &GlobalOpts) -> crate::error::Result<i32> {
    let settings = router::load_settings()?;
    if let Some(name) = router::rules(&settings)
        .default
        .as_deref()
        .filter(|d| router::is_delegate(d))
    {
        let store = crate::state::Store::open(&global.root)?;
        let d = router::open_delegate(name, &settings, store.root())?;
        return Err(d.replace_process(&[], &["features".into()]).into());
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&features::document()).expect("serializes")
    );
    Ok(0)
}
