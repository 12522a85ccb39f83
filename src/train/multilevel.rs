//! Multilevel training in depth (Meganet's `prolongateWeights`): a trained network with `steps`
//! per unit becomes one with twice the steps at half the step size, its step weights
//! interpolated linearly in time, so that both discretise the same continuous network.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::network::Layout;
use crate::params::ParamSet;

/// The finer network: `steps` doubled, `h` halved, every step's weights interpolated in time
/// between the coarse steps' centres (clamped at the ends), everything else copied.
pub fn prolongate(cfg: &Config, coarse: &ParamSet) -> Result<(Config, ParamSet)> {
    let mut fine_cfg = cfg.clone();
    for s in fine_cfg.steps.iter_mut() {
        *s = s
            .checked_mul(2)
            .ok_or_else(|| Error::Config(format!("cannot double {s} steps")))?;
    }
    fine_cfg.h = cfg.h / 2.0;
    let mut fine = Layout::new(&fine_cfg)?.init(0);
    let names: Vec<String> = fine.names().map(str::to_string).collect();
    for name in names {
        let t = fine.get_mut(&name).expect("own name");
        let data = match step_param(&name) {
            Some((unit, step, rest)) => {
                let (j0, j1, w1) = coarse_neighbours(step, cfg.steps[unit]);
                let a =
                    coarse_tensor(coarse, &format!("units.{unit}.steps.{j0}.{rest}"), &t.shape)?;
                let b =
                    coarse_tensor(coarse, &format!("units.{unit}.steps.{j1}.{rest}"), &t.shape)?;
                let w0 = 1.0 - w1;
                a.iter().zip(b).map(|(a, b)| w0 * a + w1 * b).collect()
            }
            None => coarse_tensor(coarse, &name, &t.shape)?.to_vec(),
        };
        t.data = data;
    }
    Ok((fine_cfg, fine))
}

/// `units.{k}.steps.{j}.{rest}` -> `(k, j, rest)`.
fn step_param(name: &str) -> Option<(usize, usize, &str)> {
    let rest = name.strip_prefix("units.")?;
    let (unit, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix("steps.")?;
    let (step, rest) = rest.split_once('.')?;
    Some((unit.parse().ok()?, step.parse().ok()?, rest))
}

/// The coarse steps around fine step `j` of `2 nt`, and the weight of the second: fine step `j`
/// is centred at `(j + 1/2) h/2`, coarse step `i` at `(i + 1/2) h`.
fn coarse_neighbours(j: usize, nt: usize) -> (usize, usize, f32) {
    let p = j as f64 / 2.0 - 0.25; // the fine centre in coarse-centre units
    if p <= 0.0 {
        return (0, 0, 0.0);
    }
    let j0 = (p.floor() as usize).min(nt - 1);
    let j1 = (j0 + 1).min(nt - 1);
    let w1 = if j1 == j0 {
        0.0
    } else {
        (p - j0 as f64) as f32
    };
    (j0, j1, w1)
}

fn coarse_tensor<'a>(coarse: &'a ParamSet, name: &str, shape: &[usize]) -> Result<&'a [f32]> {
    let t = coarse
        .get(name)
        .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
    if t.shape != shape {
        return Err(Error::Weights(format!(
            "`{name}` has shape {:?}, the network needs {shape:?}",
            t.shape
        )));
    }
    Ok(&t.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_steps_interpolate_between_coarse_centres() {
        // nt = 3: fine centres 0.25, 0.75, ..., 2.75 in coarse-step units (centres at 0.5, 1.5, 2.5).
        let got: Vec<_> = (0..6).map(|j| coarse_neighbours(j, 3)).collect();
        assert_eq!(got[0], (0, 0, 0.0));
        assert_eq!(got[1], (0, 1, 0.25));
        assert_eq!(got[2], (0, 1, 0.75));
        assert_eq!(got[3], (1, 2, 0.25));
        assert_eq!(got[4], (1, 2, 0.75));
        assert_eq!(got[5], (2, 2, 0.0));
        assert_eq!(coarse_neighbours(0, 1), (0, 0, 0.0));
        assert_eq!(coarse_neighbours(1, 1), (0, 0, 0.0));
    }

    #[test]
    fn step_names_parse() {
        assert_eq!(
            step_param("units.2.steps.13.norm1.bias"),
            Some((2, 13, "norm1.bias"))
        );
        assert_eq!(step_param("units.0.steps.1.K1.P"), Some((0, 1, "K1.P")));
        assert_eq!(step_param("units.0.connect.conv.weight"), None);
        assert_eq!(step_param("open.conv.weight"), None);
    }
}
