//! The order in which a backward pass without stored stages visits an interval's solver steps:
//! each step needs its input state, which only a replay from a kept state gives back. Replaying
//! every step from the interval's input costs `i` replayed steps for step `i` (quadratic in the
//! number of steps); bisection with a few checkpoints costs `O(log n)` replays per step while
//! holding at most [`REVERSE_CHECKPOINTS`] + 1 extra states, whatever the number of steps.

use crate::error::Result;
use std::ops::Range;

/// States a reversal may hold besides the interval's input. Up to `2^REVERSE_CHECKPOINTS`
/// steps are reversed by pure bisection; longer blocks fall back to replays from their start.
pub const REVERSE_CHECKPOINTS: usize = 6;

/// What reversing an interval needs from the solver.
pub trait StepReversal<V> {
    /// The state after replaying `steps` from `y`, their input.
    fn advance(&mut self, y: &V, steps: Range<usize>) -> Result<V>;
    /// Runs the backward of step `i` from its input `y` (the steps after it are done).
    fn reverse(&mut self, y: &V, i: usize) -> Result<()>;
}

/// Runs [`StepReversal::reverse`] for `steps` from the last to the first, `y` being the input of
/// the first, holding at most `checkpoints + 1` replayed states at a time.
pub fn reverse_steps<V, R: StepReversal<V>>(
    r: &mut R,
    y: &V,
    steps: Range<usize>,
    checkpoints: usize,
) -> Result<()> {
    match steps.len() {
        0 => Ok(()),
        1 => r.reverse(y, steps.start),
        _ if checkpoints == 0 => {
            for i in steps.clone().rev() {
                if i == steps.start {
                    r.reverse(y, i)?;
                } else {
                    let yi = r.advance(y, steps.start..i)?;
                    r.reverse(&yi, i)?;
                }
            }
            Ok(())
        }
        n => {
            let mid = steps.start + n / 2;
            let ym = r.advance(y, steps.start..mid)?;
            reverse_steps(r, &ym, mid..steps.end, checkpoints - 1)?;
            drop(ym);
            reverse_steps(r, y, steps.start..mid, checkpoints)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// States are step indices; counts replays and live checkpoints.
    struct Count {
        reversed: Vec<usize>,
        replayed: usize,
        live: std::rc::Rc<std::cell::Cell<usize>>,
        max_live: usize,
    }

    struct State {
        at: usize,
        live: Option<std::rc::Rc<std::cell::Cell<usize>>>,
    }

    impl Drop for State {
        fn drop(&mut self) {
            if let Some(l) = &self.live {
                l.set(l.get() - 1);
            }
        }
    }

    impl StepReversal<State> for Count {
        fn advance(&mut self, y: &State, steps: Range<usize>) -> Result<State> {
            assert_eq!(y.at, steps.start, "replayed from another step's input");
            self.replayed += steps.len();
            self.live.set(self.live.get() + 1);
            self.max_live = self.max_live.max(self.live.get());
            Ok(State {
                at: steps.end,
                live: Some(self.live.clone()),
            })
        }
        fn reverse(&mut self, y: &State, i: usize) -> Result<()> {
            assert_eq!(y.at, i, "step {i} reversed from the input of step {}", y.at);
            self.reversed.push(i);
            Ok(())
        }
    }

    fn run(n: usize, checkpoints: usize) -> Count {
        let mut c = Count {
            reversed: Vec::new(),
            replayed: 0,
            live: Default::default(),
            max_live: 0,
        };
        let y = State { at: 0, live: None };
        reverse_steps(&mut c, &y, 0..n, checkpoints).unwrap();
        assert_eq!(c.reversed, (0..n).rev().collect::<Vec<_>>(), "n = {n}");
        assert_eq!(c.live.get(), 0);
        c
    }

    #[test]
    fn every_step_once_last_first_from_its_own_input() {
        for n in 0..70 {
            for k in [0, 1, 2, REVERSE_CHECKPOINTS] {
                let c = run(n, k);
                assert!(c.max_live <= k + 1, "n {n} k {k}: {} live", c.max_live);
            }
        }
    }

    #[test]
    fn bisection_replays_n_log_n_steps_not_n_squared() {
        let quadratic = |n: usize| n * (n - 1) / 2;
        assert_eq!(run(64, 0).replayed, quadratic(64));
        for n in [8, 33, 64] {
            let c = run(n, REVERSE_CHECKPOINTS);
            let log = (n as f64).log2().ceil() as usize;
            assert!(c.replayed <= n * log, "n {n}: {} replays", c.replayed);
        }
        assert!(run(64, REVERSE_CHECKPOINTS).replayed * 5 < quadratic(64));
    }
}
