use crate::cli::{GlobalOpts, ListFormat, RouteArgs};
use crate::error::Result;
use crate::router::{self, ChosenBy};
use crate::{bundle, lifecycle};

/// `route`: what create would choose, without making anything.
pub fn run(global: &GlobalOpts, args: &RouteArgs) -> Result<i32> {
    let (settings, store) = super::context(global)?;
    if let Some(id) = &args.id {
        lifecycle::check_id(id)?;
    }
    let bundle = bundle::load(&args.bundle)?;
    let route = router::route(&bundle, args.id.as_deref(), &settings, store.root())?;
    match args.format {
        ListFormat::Table => println!("{} {}", route.backend, route.chosen_by),
        ListFormat::Json => {
            let (by, rule, refusal) = match &route.chosen_by {
                ChosenBy::Annotation => ("annotation", None, None),
                ChosenBy::Rule { index, refusal } => ("rule", Some(*index), refusal.clone()),
                ChosenBy::Default => ("default", None, None),
            };
            let doc = serde_json::json!({
                "backend": route.backend,
                "chosenBy": by,
                "rule": rule,
                "refusal": refusal,
            });
            println!("{doc}");
        }
    }
    Ok(0)
}
