//! Butcher tableaus of the explicit Runge-Kutta methods of SPEC section 10.

/// An explicit Runge-Kutta method: stage `i` evaluates `F` at `t + c[i] dt`,
/// `y0 + dt sum_j a[i][j] k_j`; the solution is `y0 + dt sum_i b[i] k_i`.
#[derive(Debug)]
pub struct Tableau {
    pub c: &'static [f64],
    /// Row `i` holds the `i` coefficients of the stages before stage `i`.
    pub a: &'static [&'static [f64]],
    pub b: &'static [f64],
    /// `b - b*` of the embedded lower-order solution (adaptive methods only).
    pub error: Option<&'static [f64]>,
    /// The last stage is `F(y1)` (first same as last): reused as the next step's first stage.
    pub fsal: bool,
}

impl Tableau {
    pub fn stages(&self) -> usize {
        self.b.len()
    }
}

pub static EULER: Tableau = Tableau {
    c: &[0.0],
    a: &[&[]],
    b: &[1.0],
    error: None,
    fsal: false,
};

pub static RK4: Tableau = Tableau {
    c: &[0.0, 0.5, 0.5, 1.0],
    a: &[&[], &[0.5], &[0.0, 0.5], &[0.0, 0.0, 1.0]],
    b: &[1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0],
    error: None,
    fsal: false,
};

/// Dormand-Prince 5(4) with Shampine's embedded error coefficients, as torchdiffeq's `dopri5`
/// (so that accepted steps and function-evaluation counts agree with it).
pub static DOPRI5: Tableau = Tableau {
    c: &[0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0],
    a: &[
        &[],
        &[1.0 / 5.0],
        &[3.0 / 40.0, 9.0 / 40.0],
        &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
        &[
            19372.0 / 6561.0,
            -25360.0 / 2187.0,
            64448.0 / 6561.0,
            -212.0 / 729.0,
        ],
        &[
            9017.0 / 3168.0,
            -355.0 / 33.0,
            46732.0 / 5247.0,
            49.0 / 176.0,
            -5103.0 / 18656.0,
        ],
        &[
            35.0 / 384.0,
            0.0,
            500.0 / 1113.0,
            125.0 / 192.0,
            -2187.0 / 6784.0,
            11.0 / 84.0,
        ],
    ],
    b: &[
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
        0.0,
    ],
    error: Some(&[
        35.0 / 384.0 - 1951.0 / 21600.0,
        0.0,
        500.0 / 1113.0 - 22642.0 / 50085.0,
        125.0 / 192.0 - 451.0 / 720.0,
        -2187.0 / 6784.0 + 12231.0 / 42400.0,
        11.0 / 84.0 - 649.0 / 6300.0,
        -1.0 / 60.0,
    ]),
    fsal: true,
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Row sums of `a` equal `c`, and `b` sums to one: the consistency conditions.
    #[test]
    fn tableaus_are_consistent() {
        for t in [&EULER, &RK4, &DOPRI5] {
            assert_eq!(t.a.len(), t.stages());
            assert_eq!(t.c.len(), t.stages());
            for (i, row) in t.a.iter().enumerate() {
                assert_eq!(row.len(), i);
                let s: f64 = row.iter().sum();
                assert!((s - t.c[i]).abs() < 1e-14, "row {i}: {s} vs {}", t.c[i]);
            }
            assert!((t.b.iter().sum::<f64>() - 1.0).abs() < 1e-14);
            if let Some(e) = t.error {
                // b* sums to one too, so the error weights sum to zero.
                assert!(e.iter().sum::<f64>().abs() < 1e-14);
            }
        }
        // FSAL: the last stage's row is the solution's weights.
        let last = DOPRI5.a[6];
        for (a, b) in last.iter().zip(DOPRI5.b) {
            assert_eq!(a, b);
        }
    }
}
