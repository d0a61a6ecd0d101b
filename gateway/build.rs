// The schema lives in the workspace's top-level `migrations/`; it is embedded
// at compile time (by the schema-sync test today, by `sqlx::migrate!` later),
// so a change there must rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
