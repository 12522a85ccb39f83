//! A whole network's pass: the forward through every unit and connective layer, the loss, and
//! the backward in reverse order.

use super::*;

/// Shape of each unit's input and the features before the classifier.
pub(super) struct Geometry {
    pub(super) unit_dims: Vec<Dims>,
    pub(super) feature_dims: Dims,
}

impl<B: Backend> Engine<B> {
    pub(super) fn geometry(&self, x: &HostTensor) -> Result<Geometry> {
        let cfg = &self.layout.config;
        let (n, mut d) = match (cfg.kind, x.shape.as_slice()) {
            (NetworkKind::Image, &[n, c, h, w]) if c == cfg.input_width() => {
                (n, Dims::new(n, c, h, w))
            }
            (NetworkKind::Dense, &[n, c]) if c == cfg.input_width() => (n, Dims::dense(n, c)),
            _ => {
                let want = match cfg.kind {
                    NetworkKind::Image => format!("[N, {}, H, W]", cfg.input_width()),
                    NetworkKind::Dense => format!("[N, {}]", cfg.input_width()),
                };
                return Err(Error::Shape(format!(
                    "input `x` has shape {:?}, expected {want}",
                    x.shape
                )));
            }
        };
        if n == 0 || d.hw() == 0 {
            return Err(Error::Shape(format!("input `x` is empty: {:?}", x.shape)));
        }
        let mut unit_dims = Vec::new();
        for (k, u) in self.layout.units.iter().enumerate() {
            d = d.with_c(u.width);
            unit_dims.push(d);
            let last = k + 1 == self.layout.units.len();
            if cfg.kind == NetworkKind::Image && !last {
                if cfg.connect == Connect::Haar {
                    if d.h % 2 != 0 || d.w % 2 != 0 {
                        return Err(Error::Shape(format!(
                            "the Haar connection after unit {k} needs even sizes, got {}x{}",
                            d.h, d.w
                        )));
                    }
                } else if d.h < 2 || d.w < 2 {
                    return Err(Error::Shape(format!(
                        "input {}x{} is too small to pool after unit {k}",
                        x.shape[2], x.shape[3]
                    )));
                }
                d = d.pooled();
            }
        }
        let wl = self.layout.units.last().map(|u| u.out_width).unwrap_or(0);
        Ok(Geometry {
            unit_dims,
            feature_dims: Dims::dense(n, wl),
        })
    }

    pub(super) fn forward(
        &self,
        x: &HostTensor,
        sched: MemoryPolicy,
        train: bool,
    ) -> Result<(Tape<B>, Geometry)> {
        let be = &self.backend;
        let geo = self.geometry(x)?;
        let xd = match self.layout.config.kind {
            NetworkKind::Image => Dims::new(x.shape[0], x.shape[1], x.shape[2], x.shape[3]),
            NetworkKind::Dense => Dims::dense(x.shape[0], x.shape[1]),
        };
        let xb = be.upload_host(x)?;
        let (mut y, open) = self.open_forward(&xb, xd, train)?;
        let mut units = Vec::new();
        let mut connects = Vec::new();
        let chain = self.haar_chain();
        let mut pre = None;
        for k in 0..self.layout.units.len() {
            let d = geo.unit_dims[k];
            let (out, mut kept) = self.unit_forward(k, &y, pre.take(), d, sched)?;
            let input = (!chain || k == 0).then_some(y);
            if chain && k + 1 < self.layout.units.len() {
                let (next, p) = self.haar_carry(&mut kept, d, self.unit_shift(k, sched))?;
                pack_window(be, &mut kept, sched.storage)?;
                units.push(UnitTape {
                    input,
                    output: None,
                    kept,
                });
                connects.push(None);
                y = next;
                pre = Some(p);
                continue;
            }
            pack_window(be, &mut kept, sched.storage)?;
            let (next, ct) = self.connect_forward(k, &out, d, train)?;
            units.push(UnitTape {
                input,
                output: Some(out),
                kept,
            });
            connects.push(ct);
            y = next;
        }
        Ok((
            Tape {
                x: xb,
                x_dims: xd,
                open,
                units,
                connects,
                features: y,
            },
            geo,
        ))
    }

    /// Evaluation-mode logits `[n, classes]` (batch norm with running statistics).
    pub fn logits(&self, x: &HostTensor) -> Result<Vec<f32>> {
        let sched = Policy::Reversible.memory();
        let (tape, geo) = self.forward(x, sched, false)?;
        let logits = self.classify(&tape.features, geo.feature_dims)?;
        self.backend.download_f32(&logits)
    }

    /// Training-mode loss (batch statistics) without the backward pass.
    pub fn loss(&self, x: &HostTensor, labels: &[usize]) -> Result<f64> {
        let sched = Policy::Reversible.memory();
        let (tape, geo) = self.forward(x, sched, true)?;
        let logits = self.classify(&tape.features, geo.feature_dims)?;
        let n = x.shape[0];
        Ok(self
            .backend
            .softmax_xent(&logits, n, self.layout.config.classes, labels)?
            .0)
    }

    /// Forward, loss and backward in training mode (batch statistics). When `update_running`,
    /// the batch-norm running statistics are updated as PyTorch does.
    pub fn grad(
        &mut self,
        x: &HostTensor,
        labels: &[usize],
        sched: MemoryPolicy,
        update_running: bool,
    ) -> Result<GradOutput> {
        self.check_labels(x, labels)?;
        let (pass, stats) = self.resident_pass(x, Head::Labels(labels), sched)?;
        self.check_loss(x, pass.loss)?;
        if update_running {
            self.update_running(&stats)?;
        }
        self.download_pass(pass)
    }

    /// [`Engine::grad`] with the running statistics updated and the gradients left on the
    /// backend (nothing but the logits is downloaded): a training step's first half, the
    /// second being an optimizer update through [`Engine::params_resident`].
    pub fn grad_resident(
        &mut self,
        x: &HostTensor,
        labels: &[usize],
        sched: MemoryPolicy,
    ) -> Result<ResidentGrads<B>> {
        self.check_labels(x, labels)?;
        let (pass, stats) = self.resident_pass(x, Head::Labels(labels), sched)?;
        self.check_loss(x, pass.loss)?;
        self.update_running(&stats)?;
        Ok(ResidentGrads {
            loss: pass.loss,
            logits: pass.logits,
            grads: pass.grads,
            drift: pass.drift,
        })
    }

    /// The backend, the parameter template (names, roles, shapes; no values) and the
    /// parameters as the backend holds them, by template position, for in-place updates.
    pub fn params_resident(&mut self) -> (&B, &ParamSet, &mut [B::Buf]) {
        (&self.backend, &self.layout.template, &mut self.params)
    }

    fn check_labels(&self, x: &HostTensor, labels: &[usize]) -> Result<()> {
        let classes = self.layout.config.classes;
        if labels.len() != x.shape.first().copied().unwrap_or(0) {
            return Err(Error::Shape(format!(
                "{} labels for a batch of {}",
                labels.len(),
                x.shape.first().copied().unwrap_or(0)
            )));
        }
        if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::Input(format!(
                "label {bad} is out of range for {classes} classes"
            )));
        }
        Ok(())
    }

    /// A non-finite loss as an error naming where the first non-finite values appear.
    fn check_loss(&self, x: &HostTensor, loss: f64) -> Result<()> {
        if loss.is_finite() {
            return Ok(());
        }
        let at = self
            .first_non_finite(x)?
            .unwrap_or_else(|| "the loss".into());
        Err(Error::NonFinite(format!(
            "the loss is {loss}; the first non-finite values appear in `{at}`"
        )))
    }

    /// Right-hand-side evaluations `[forward, backward]` of the last pass, all units together.
    pub fn last_nfe_totals(&self) -> [usize; 2] {
        [
            self.nfe_counts(0).iter().sum(),
            self.nfe_counts(1).iter().sum(),
        ]
    }

    /// The forward (`pass` 0) or backward (1) right-hand-side evaluations per unit.
    pub(super) fn nfe_counts(&self, pass: usize) -> Vec<usize> {
        let nfe = self.nfe.lock().unwrap_or_else(|e| e.into_inner());
        (0..self.layout.units.len())
            .map(|k| nfe.get(k).map_or(0, |c| c[pass]))
            .collect()
    }

    #[allow(clippy::type_complexity)]
    /// Forward, loss and backward with everything the backward computes left on the backend,
    /// and the running-statistics updates it collected (not applied).
    pub(super) fn resident_pass(
        &self,
        x: &HostTensor,
        head: Head<'_>,
        sched: MemoryPolicy,
    ) -> Result<(ResidentPass<B>, Vec<RunningUpdate<B::Buf>>)> {
        let be = &self.backend;
        let n = x.shape[0];
        let units_n = self.layout.units.len();
        *self.nfe.lock().unwrap_or_else(|e| e.into_inner()) = vec![[0, 0]; units_n];
        let mut grads = Grads::<B> {
            g: Vec::with_capacity(self.params.len()),
        };
        for (_, role, t) in self.layout.template.iter() {
            grads.g.push(match role {
                ParamRole::Buffer => None,
                _ => Some(be.zeros(t.numel())?),
            });
        }
        let (tape, geo) = self.forward(x, sched, true)?;
        let Tape {
            x: xb,
            x_dims,
            open,
            units,
            connects,
            features,
        } = tape;
        let fd = geo.feature_dims;
        let classes = self.layout.config.classes;
        let logits = self.classify(&features, fd)?;
        let (loss, g_logits) = match head {
            Head::Labels(labels) => be.softmax_xent(&logits, n, classes, labels)?,
            Head::LogitsGrad(g) => (0.0, external::upload_logits_grad(be, g, n, classes)?),
        };
        let logits_host = be.download_f32(&logits)?;
        drop(logits);

        let mut running = Vec::new();
        let mut g = self.classify_backward(features, fd, g_logits, &mut grads)?;

        let mut drift: f64 = 0.0;
        let mut units = units;
        let mut connects = connects;
        let chain = self.haar_chain();
        // In a Haar chain: the gradient of the next unit's Y_{-1} and its rebuilt first states.
        let mut carry: Option<(B::Buf, Option<Pair<B>>)> = None;
        for k in (0..self.layout.units.len()).rev() {
            let d = geo.unit_dims[k];
            let mut ut = units.pop().expect("one tape per unit");
            let ct = connects.pop().expect("one tape per connect");
            let (g_out, g_pre) = match carry.take() {
                Some((g_m1, pair)) => {
                    if let (Kept::Nothing, Some(p)) = (&ut.kept, pair) {
                        ut.kept = self.haar_uncarry(p, d)?;
                    }
                    // H is orthonormal: its adjoint is its inverse.
                    (be.haar_inv(&g, d)?, Some(be.haar_inv(&g_m1, d)?))
                }
                None => {
                    let y = ut.output.take();
                    let g =
                        self.connect_backward(k, y.as_ref(), d, ct, g, &mut grads, &mut running)?;
                    (g, None)
                }
            };
            let want_pair = chain && k > 0;
            let r = self.unit_backward(k, ut, d, g_out, g_pre, want_pair, sched, &mut grads)?;
            drift = drift.max(r.drift);
            g = r.g;
            if want_pair {
                let g_m1 = r
                    .g_pre
                    .ok_or_else(|| Error::Other("leapfrog chain lost Y_-1's gradient".into()))?;
                carry = Some((g_m1, r.pair));
            }
        }
        let g_x = self.open_backward(open, &xb, x_dims, g, &mut grads, &mut running)?;
        Ok((
            ResidentPass {
                loss,
                logits: logits_host,
                g_x,
                grads: grads.g,
                drift,
            },
            running,
        ))
    }

    /// Downloads a pass's input and parameter gradients, freeing each device gradient once it
    /// is on the host (one copy at a time, not two).
    pub(super) fn download_pass(&self, pass: ResidentPass<B>) -> Result<GradOutput> {
        let be = &self.backend;
        let grad_x = be.download_f32(&pass.g_x)?;
        let mut grads = pass.grads;
        let mut out = ParamSet::new();
        for (i, (name, role, t)) in self.layout.template.iter().enumerate() {
            if role == ParamRole::Buffer {
                continue;
            }
            let data = match grads[i].take() {
                Some(b) => be.download_f32(&b)?,
                None => vec![0.0; t.numel()],
            };
            out.push(
                name,
                role,
                HostTensor {
                    shape: t.shape.clone(),
                    data,
                },
            );
        }
        Ok(GradOutput {
            loss: pass.loss,
            logits: pass.logits,
            grad_x,
            grads: out,
            drift: pass.drift,
            nfe_forward: self.nfe_counts(0),
            nfe_backward: self.nfe_counts(1),
        })
    }
}

/// What a backward pass leaves on the backend before anything but the logits is downloaded.
pub(super) struct ResidentPass<B: Backend> {
    pub(super) loss: f64,
    pub(super) logits: Vec<f32>,
    pub(super) g_x: B::Buf,
    /// By template position; `None` for buffers.
    pub(super) grads: Vec<Option<B::Buf>>,
    pub(super) drift: f64,
}
