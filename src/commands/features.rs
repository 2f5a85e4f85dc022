use crate::features;

pub fn run() -> crate::error::Result<i32> {
    println!(
        "{}",
        serde_json::to_string_pretty(&features::document()).expect("serializes")
    );
    Ok(0)
}
