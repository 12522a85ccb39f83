//! Optimizer updates as backend ops, so that weights and optimizer state stay where the backend
//! keeps them (issue 12: device-resident training). The rules are PyTorch's `SGD` (momentum,
//! dampening 0, L2 weight decay added to the gradient) and `Adam`. The element formulas below
//! are the specification: the reference and CPU backends call them, `kernels/optim.cu` writes the
//! same operations in the same order without contraction, so all three agree bit for bit in f32.

/// One SGD step's scalars: `d = g + wd w; m = mu m + d; w -= lr m`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    pub lr: f64,
    pub momentum: f64,
    /// 0 for parameters that are not weights.
    pub weight_decay: f64,
}

/// One Adam step's scalars: `d = g + wd w; m = b1 m + (1-b1) d; v = b2 v + (1-b2) d^2;
/// w -= lr (m / bias1) / (sqrt(v / bias2) + eps)`, the moments in f64 and stored in the
/// buffer's precision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// 0 for parameters that are not weights.
    pub weight_decay: f64,
    /// `1 - beta1^t` and `1 - beta2^t` at step `t` (1-based).
    pub bias1: f64,
    pub bias2: f64,
}

/// A value an optimizer buffer holds (f32 on the fast backends, f64 on the reference).
pub trait OptimValue: Copy {
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn mul(self, o: Self) -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
}

macro_rules! optim_value {
    ($t:ty) => {
        impl OptimValue for $t {
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn mul(self, o: Self) -> Self {
                self * o
            }
            fn add(self, o: Self) -> Self {
                self + o
            }
            fn sub(self, o: Self) -> Self {
                self - o
            }
        }
    };
}
optim_value!(f32);
optim_value!(f64);

impl SgdStep {
    /// One element, in the buffer's precision.
    #[inline]
    pub fn apply<T: OptimValue>(&self, w: &mut T, m: &mut T, g: T) {
        let (lr, mu, wd) = (
            T::from_f64(self.lr),
            T::from_f64(self.momentum),
            T::from_f64(self.weight_decay),
        );
        let d = g.add(wd.mul(*w));
        *m = mu.mul(*m).add(d);
        *w = w.sub(lr.mul(*m));
    }
}

impl AdamStep {
    /// One element: the moments and the step in f64, stored in the buffer's precision.
    #[inline]
    pub fn apply<T: OptimValue>(&self, w: &mut T, m: &mut T, v: &mut T, g: T) {
        let wd = T::from_f64(self.weight_decay);
        let d = g.add(wd.mul(*w)).to_f64();
        let mn = self.beta1 * m.to_f64() + (1.0 - self.beta1) * d;
        let vn = self.beta2 * v.to_f64() + (1.0 - self.beta2) * d * d;
        *m = T::from_f64(mn);
        *v = T::from_f64(vn);
        let step = self.lr * (mn / self.bias1) / ((vn / self.bias2).sqrt() + self.eps);
        *w = T::from_f64(w.to_f64() - step);
    }
}

/// [`SgdStep::apply`] over whole buffers (lengths checked by the caller).
pub fn sgd_host<T: OptimValue>(s: &SgdStep, w: &mut [T], m: &mut [T], g: &[T]) {
    for ((w, m), &g) in w.iter_mut().zip(m.iter_mut()).zip(g) {
        s.apply(w, m, g);
    }
}

/// [`AdamStep::apply`] over whole buffers (lengths checked by the caller).
pub fn adam_host<T: OptimValue>(s: &AdamStep, w: &mut [T], m: &mut [T], v: &mut [T], g: &[T]) {
    for (((w, m), v), &g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        s.apply(w, m, v, g);
    }
}

/// A parameter type's conversion to f64 and back.
pub type Cast<T> = (fn(T) -> f64, fn(f64) -> T);

/// Adam on one flat parameter vector on the host, for the solvers that train outside the
/// engine (potential networks, TNRD): PyTorch's update ([`AdamStep`], no weight decay) with the
/// moments in f64 whatever the parameters' precision; `cast` converts a parameter to f64 and back.
#[derive(Clone, Debug)]
pub struct FlatAdam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
    eps: f64,
}

impl FlatAdam {
    pub fn new(len: usize, eps: f64) -> Self {
        FlatAdam {
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
            eps,
        }
    }

    pub fn step<T: Copy>(&mut self, theta: &mut [T], g: &[T], lr: f64, cast: Cast<T>) {
        let (beta1, beta2) = (0.9f64, 0.999f64);
        self.t += 1;
        let s = AdamStep {
            lr,
            beta1,
            beta2,
            eps: self.eps,
            weight_decay: 0.0,
            bias1: 1.0 - beta1.powi(self.t),
            bias2: 1.0 - beta2.powi(self.t),
        };
        for (((w, &gi), m), v) in theta.iter_mut().zip(g).zip(&mut self.m).zip(&mut self.v) {
            let mut wf = cast.0(*w);
            s.apply(&mut wf, m, v, cast.0(gi));
            *w = cast.1(wf);
        }
    }
}

/// The error for buffers of different lengths, naming the op.
pub(crate) fn check_lens(what: &str, lens: &[usize]) -> crate::error::Result<()> {
    if lens.windows(2).any(|p| p[0] != p[1]) {
        return Err(crate::error::Error::Shape(format!(
            "{what}: weight, state and gradient lengths differ: {lens:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FlatAdam is `adam_host` with the step count kept: bit-identical in f64, and its f32
    /// parameters (moments in f64) within f32 rounding of that.
    #[test]
    fn flat_adam_is_adam_host() {
        let g = [0.3f64, -1.5, 2e-3, 0.0];
        let (mut w, mut m, mut v) = ([1.0f64, -2.0, 0.5, 3.0], [0.0; 4], [0.0; 4]);
        let mut wf = w;
        let mut w32 = w.map(|x| x as f32);
        let g32 = g.map(|x| x as f32);
        let (mut flat, mut flat32) = (FlatAdam::new(4, 1e-8), FlatAdam::new(4, 1e-8));
        for t in 1..=3 {
            let s = AdamStep {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                bias1: 1.0 - 0.9f64.powi(t),
                bias2: 1.0 - 0.999f64.powi(t),
            };
            adam_host(&s, &mut w, &mut m, &mut v, &g);
            flat.step(&mut wf, &g, 0.1, (f64::from, f64::from));
            flat32.step(&mut w32, &g32, 0.1, (f64::from, |x| x as f32));
        }
        assert_eq!(wf, w);
        assert_ne!(w, [1.0, -2.0, 0.5, 3.0]);
        for (a, b) in w32.iter().zip(&w) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
