//! A small candle model with a pdenet unit, trained on the MNIST subset shipped in
//! `data/mnist-small`: a candle 3x3 convolution (1 -> 8 channels, stride 2), a 4-step
//! reversible hyperbolic pdenet unit at width 8, 2x2 average pooling and a candle linear
//! classifier, trained together by candle-nn's AdamW.
//!
//!     cargo run --release -p pdenet-candle --example mnist [-- DATA_DIR [STEPS]]

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{conv2d, linear, Conv2dConfig, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use pdenet::api::UnitOptions;
use pdenet::config::StepType;
use pdenet::schedule::Policy;
use pdenet::train::data::{load_mnist_dir, Dataset};
use std::time::Instant;

const WIDTH: usize = 8;
const BATCH: usize = 32;

struct Model {
    open: candle_nn::Conv2d,
    unit: pdenet_candle::Unit,
    theta: Var,
    head: candle_nn::Linear,
}

impl Model {
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let z = self.open.forward(x)?.relu()?; // [n, 8, 14, 14]
        let z = self.unit.forward(&z, &self.theta)?; // pdenet: forward and backward
        let z = z.avg_pool2d(2)?.flatten_from(1)?; // [n, 8 * 7 * 7]
        self.head.forward(&z)
    }
}

fn batch(ds: &Dataset, idx: &[usize], dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let (x, labels) = ds
        .batch(idx)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let x = Tensor::from_vec(x.data, x.shape, dev)?;
    let y = Tensor::from_vec(labels.iter().map(|&l| l as u32).collect(), idx.len(), dev)?;
    Ok((x, y))
}

fn accuracy(m: &Model, ds: &Dataset, dev: &Device) -> candle_core::Result<f64> {
    let mut right = 0usize;
    let idx: Vec<usize> = (0..ds.len()).collect();
    for chunk in idx.chunks(250) {
        let (x, y) = batch(ds, chunk, dev)?;
        let pred = m.logits(&x)?.argmax(D::Minus1)?;
        right += pred
            .eq(&y)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize;
    }
    Ok(right as f64 / ds.len() as f64)
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist-small").into());
    let steps: usize = args
        .get(2)
        .map_or(Ok(300), |s| s.parse())
        .map_err(candle_core::Error::msg)?;
    let data = load_mnist_dir(std::path::Path::new(&dir))
        .map_err(|e| candle_core::Error::Msg(format!("pdenet: {e}")))?;
    let dev = Device::Cpu;

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let cfg = Conv2dConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    };
    let unit = pdenet_candle::Unit::new(
        &UnitOptions::new(StepType::Hyperbolic, WIDTH, 4, 0.5),
        Policy::Reversible,
    )?;
    let theta = Var::from_tensor(&unit.init_params(&dev)?)?;
    let model = Model {
        open: conv2d(1, WIDTH, 3, cfg, vb.pp("open"))?,
        head: linear(WIDTH * 7 * 7, 10, vb.pp("head"))?,
        unit,
        theta: theta.clone(),
    };
    let mut vars = varmap.all_vars();
    vars.push(theta);
    let mut opt = candle_nn::AdamW::new(
        vars,
        ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    println!(
        "MNIST subset: {} train, {} test images; pdenet unit: hyperbolic, width {WIDTH}, 4 steps, \
         reversible, {} parameters packed in one tensor",
        data.train.len(),
        data.test.len(),
        model.unit.packed_len()
    );
    let t0 = Instant::now();
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut running = 0.0;
    for step in 1..=steps {
        let start = ((step - 1) * BATCH) % data.train.len();
        if start == 0 {
            // A fixed-seed shuffle each epoch (xorshift).
            for i in (1..order.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                order.swap(i, (state % (i as u64 + 1)) as usize);
            }
        }
        let idx = &order[start..(start + BATCH).min(order.len())];
        let (x, y) = batch(&data.train, idx, &dev)?;
        let loss = candle_nn::loss::cross_entropy(&model.logits(&x)?, &y)?;
        opt.backward_step(&loss)?;
        running += loss.to_scalar::<f32>()? as f64;
        if step % 50 == 0 {
            println!(
                "step {step:4}  loss {:.4}  ({:.1} s)",
                running / 50.0,
                t0.elapsed().as_secs_f64()
            );
            running = 0.0;
        }
    }
    let acc = accuracy(&model, &data.test, &dev)?;
    println!(
        "test accuracy {:.2}% on {} images after {steps} steps ({:.1} s)",
        100.0 * acc,
        data.test.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
