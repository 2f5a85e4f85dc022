use crate::cli::BundleArgs;
use crate::error::Result;

/// `nexcage bundle`: an image in, a runnable bundle out (src/image/).
pub fn run(args: &BundleArgs) -> Result<i32> {
    let base = crate::lifecycle::default_spec(false);
    crate::image::make_bundle(&args.image, &args.out, args.tag.as_deref(), base)?;
    Ok(0)
}
