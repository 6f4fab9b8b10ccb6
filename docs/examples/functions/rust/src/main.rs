// upper in Rust: the payload in upper case; the subject in the log.
use std::io::{Read, Write};

fn main() {
    let subject = std::env::args().nth(1).unwrap_or_default();
    let mut payload = Vec::new();
    std::io::stdin().read_to_end(&mut payload).unwrap();
    eprintln!("called on {subject}");
    std::io::stdout().write_all(&payload.to_ascii_uppercase()).unwrap();
}
