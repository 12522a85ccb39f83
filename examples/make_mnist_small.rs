//! Writes `data/mnist-small/` (the first 5,000 training and 1,000 test digits of MNIST, IDX .gz)
//! from a full MNIST folder: `cargo run --example make_mnist_small [-- SRC [DST]]`.

fn main() {
    let mut args = std::env::args().skip(1);
    let src = args.next().unwrap_or_else(|| "../shared/data/mnist".into());
    let dst = args.next().unwrap_or_else(|| "data/mnist-small".into());
    if let Err(e) = pdenet::train::data::write_mnist_subset(
        std::path::Path::new(&src),
        std::path::Path::new(&dst),
        5000,
        1000,
    ) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
