//! Builds the tests' varied source tree at DIR (manual debugging aid; needs root
//! for owners, device nodes and `trusted.*` xattrs):
//!
//! ```text
//! cargo run -p imagefs-erofs --example build_tree -- DIR [big]
//! ```
//!
//! `big` adds the multi-MiB files of the kernel differential tests.

#[path = "../tests/image/fixture.rs"]
mod fixture;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, big) = match args.as_slice() {
        [dir] => (dir, false),
        [dir, big] if big == "big" => (dir, true),
        _ => {
            eprintln!("usage: build_tree DIR [big]");
            std::process::exit(2);
        }
    };
    fixture::build_tree(std::path::Path::new(dir), big, true);
}
