//! The affine layers around the units: the opening layer, the connective layers (with pooling)
//! and the classifier, forward and backward.

use super::*;
use crate::backend::ConvSpec;

impl<B: Backend> Engine<B> {
    /// Opening layer: image `relu(BN(conv3x3 x))`, dense `tanh(W x + b)`.
    pub(super) fn open_forward(
        &self,
        x: &B::Buf,
        xd: Dims,
        train: bool,
    ) -> Result<(B::Buf, AffineTape<B>)> {
        let be = &self.backend;
        let w0 = self.layout.units[0].width;
        match self.layout.open {
            OpenIdx::ConvBn {
                conv,
                bn_weight,
                bn_bias,
                running_mean,
                running_var,
            } => {
                let z = be.conv(ConvSpec::full3x3(), x, xd, &self.params[conv], w0)?;
                let zd = xd.with_c(w0);
                self.bn_relu(
                    z,
                    zd,
                    train,
                    [bn_weight, bn_bias, running_mean, running_var],
                )
            }
            OpenIdx::Dense { weight, bias } => self.dense_tanh(x, xd, weight, bias, w0),
        }
    }

    pub(super) fn bn_relu(
        &self,
        z: B::Buf,
        d: Dims,
        train: bool,
        idx: [usize; 4],
    ) -> Result<(B::Buf, AffineTape<B>)> {
        let be = &self.backend;
        let [g, b, rm, rv] = idx.map(|i| &self.params[i]);
        let (a, stats) = if train {
            let (a, s) = be.batchnorm_train(&z, d, g, b)?;
            (a, Some(s))
        } else {
            (be.batchnorm_eval(&z, d, g, b, rm, rv)?, None)
        };
        let y = be.activation(Activation::Relu, &a)?;
        Ok((y, AffineTape { z, stats }))
    }

    pub(super) fn dense_tanh(
        &self,
        x: &B::Buf,
        xd: Dims,
        weight: usize,
        bias: usize,
        out: usize,
    ) -> Result<(B::Buf, AffineTape<B>)> {
        let be = &self.backend;
        let zd = be.conv(ConvSpec::full1x1(), x, xd, &self.params[weight], out)?;
        let z = be.add_channel_bias(&zd, xd.with_c(out), &self.params[bias])?;
        let y = be.activation(Activation::Tanh, &z)?;
        Ok((y, AffineTape { z, stats: None }))
    }

    /// Connective layer after unit `k` (and pooling or the global mean).
    pub(super) fn connect_forward(
        &self,
        k: usize,
        y: &B::Buf,
        d: Dims,
        train: bool,
    ) -> Result<(B::Buf, Option<AffineTape<B>>)> {
        let be = &self.backend;
        let u = &self.layout.units[k];
        let last = k + 1 == self.layout.units.len();
        let od = d.with_c(u.out_width);
        if let ConnectIdx::Haar = u.connect {
            let out = if last {
                be.global_mean(y, d)?
            } else {
                be.haar(y, d)?
            };
            return Ok((out, None));
        }
        let (r, tape) = match u.connect {
            ConnectIdx::ConvBn {
                conv,
                bn_weight,
                bn_bias,
                running_mean,
                running_var,
            } => {
                let z = be.conv(ConvSpec::full1x1(), y, d, &self.params[conv], u.out_width)?;
                let (r, t) = self.bn_relu(
                    z,
                    od,
                    train,
                    [bn_weight, bn_bias, running_mean, running_var],
                )?;
                (r, Some(t))
            }
            ConnectIdx::Dense { weight, bias } => {
                let (r, t) = self.dense_tanh(y, d, weight, bias, u.out_width)?;
                (r, Some(t))
            }
            ConnectIdx::None | ConnectIdx::Haar => (be.copy(y)?, None),
        };
        let out = match self.layout.config.kind {
            NetworkKind::Image if last => be.global_mean(&r, od)?,
            NetworkKind::Image => be.avgpool2(&r, od)?,
            NetworkKind::Dense => r,
        };
        Ok((out, tape))
    }

    pub(super) fn classify(&self, features: &B::Buf, fd: Dims) -> Result<B::Buf> {
        let be = &self.backend;
        let classes = self.layout.config.classes;
        let z = be.conv(
            ConvSpec::full1x1(),
            features,
            fd,
            &self.params[self.layout.classifier_weight],
            classes,
        )?;
        be.add_channel_bias(
            &z,
            fd.with_c(classes),
            &self.params[self.layout.classifier_bias],
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn bn_relu_backward(
        &self,
        tape: AffineTape<B>,
        d: Dims,
        g: B::Buf,
        bn_weight: usize,
        bn_bias: usize,
        grads: &mut Grads<B>,
        running: &mut Vec<RunningUpdate<B::Buf>>,
        running_idx: (usize, usize),
    ) -> Result<B::Buf> {
        let be = &self.backend;
        let stats = tape
            .stats
            .ok_or_else(|| Error::Other("batch norm ran without statistics".into()))?;
        let a = be.batchnorm_eval(
            &tape.z,
            d,
            &self.params[bn_weight],
            &self.params[bn_bias],
            &stats.mean,
            &stats.var,
        )?;
        let ga = be.activation_vjp(Activation::Relu, &a, &g)?;
        drop((a, g));
        let (gz, dgamma, dbeta) =
            be.batchnorm_vjp(&tape.z, d, &self.params[bn_weight], &stats, &ga)?;
        grads.add(be, bn_weight, 1.0, dgamma)?;
        grads.add(be, bn_bias, 1.0, dbeta)?;
        running.push((running_idx.0, running_idx.1, stats, d.n * d.hw()));
        Ok(gz)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn connect_backward(
        &self,
        k: usize,
        y: Option<&B::Buf>,
        d: Dims,
        tape: Option<AffineTape<B>>,
        g: B::Buf,
        grads: &mut Grads<B>,
        running: &mut Vec<RunningUpdate<B::Buf>>,
    ) -> Result<B::Buf> {
        let be = &self.backend;
        let u = &self.layout.units[k];
        let last = k + 1 == self.layout.units.len();
        let od = d.with_c(u.out_width);
        if let ConnectIdx::Haar = u.connect {
            // H is orthonormal: its adjoint is its inverse.
            return if last {
                be.global_mean_vjp(&g, d)
            } else {
                be.haar_inv(&g, d)
            };
        }
        let g = match self.layout.config.kind {
            NetworkKind::Image if last => be.global_mean_vjp(&g, od)?,
            NetworkKind::Image => be.avgpool2_vjp(&g, od)?,
            NetworkKind::Dense => g,
        };
        match (u.connect, tape) {
            (
                ConnectIdx::ConvBn {
                    conv,
                    bn_weight,
                    bn_bias,
                    running_mean,
                    running_var,
                },
                Some(t),
            ) => {
                let gz = self.bn_relu_backward(
                    t,
                    od,
                    g,
                    bn_weight,
                    bn_bias,
                    grads,
                    running,
                    (running_mean, running_var),
                )?;
                let y = y.ok_or_else(|| Error::Other(format!("unit {k} kept no output")))?;
                grads.add(
                    be,
                    conv,
                    1.0,
                    be.conv_wgrad(ConvSpec::full1x1(), y, d, &gz, u.out_width)?,
                )?;
                be.conv_t(ConvSpec::full1x1(), &gz, od, &self.params[conv], d.c)
            }
            (ConnectIdx::Dense { weight, bias }, Some(t)) => {
                let gz = be.activation_vjp(Activation::Tanh, &t.z, &g)?;
                grads.add(be, bias, 1.0, be.channel_sum(&gz, od)?)?;
                let y = y.ok_or_else(|| Error::Other(format!("unit {k} kept no output")))?;
                grads.add(
                    be,
                    weight,
                    1.0,
                    be.conv_wgrad(ConvSpec::full1x1(), y, d, &gz, u.out_width)?,
                )?;
                be.conv_t(ConvSpec::full1x1(), &gz, od, &self.params[weight], d.c)
            }
            (ConnectIdx::None | ConnectIdx::Haar, _) => Ok(g),
            _ => Err(Error::Other(format!(
                "connective layer {k} ran without a tape"
            ))),
        }
    }

    /// Backward through the classifier: adds its gradients, returns the features' gradient.
    pub(super) fn classify_backward(
        &self,
        features: B::Buf,
        fd: Dims,
        g_logits: B::Buf,
        grads: &mut Grads<B>,
    ) -> Result<B::Buf> {
        let be = &self.backend;
        let classes = self.layout.config.classes;
        let cd = fd.with_c(classes);
        grads.add(
            be,
            self.layout.classifier_bias,
            1.0,
            be.channel_sum(&g_logits, cd)?,
        )?;
        grads.add(
            be,
            self.layout.classifier_weight,
            1.0,
            be.conv_wgrad(ConvSpec::full1x1(), &features, fd, &g_logits, classes)?,
        )?;
        be.conv_t(
            ConvSpec::full1x1(),
            &g_logits,
            cd,
            &self.params[self.layout.classifier_weight],
            fd.c,
        )
    }

    /// Backward through the opening layer: adds its gradients, returns the input's gradient.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_backward(
        &self,
        open: AffineTape<B>,
        xb: &B::Buf,
        x_dims: Dims,
        g: B::Buf,
        grads: &mut Grads<B>,
        running: &mut Vec<RunningUpdate<B::Buf>>,
    ) -> Result<B::Buf> {
        let be = &self.backend;
        // Opening layer: relu's derivative is read off its output (unit 0's input, kept above
        // only as long as needed), so recompute that output from z instead.
        let w0 = self.layout.units[0].width;
        Ok(match self.layout.open {
            OpenIdx::ConvBn {
                conv,
                bn_weight,
                bn_bias,
                running_mean,
                running_var,
            } => {
                let zd = x_dims.with_c(w0);
                let gz = self.bn_relu_backward(
                    open,
                    zd,
                    g,
                    bn_weight,
                    bn_bias,
                    grads,
                    running,
                    (running_mean, running_var),
                )?;
                grads.add(
                    be,
                    conv,
                    1.0,
                    be.conv_wgrad(ConvSpec::full3x3(), xb, x_dims, &gz, w0)?,
                )?;
                be.conv_t(ConvSpec::full3x3(), &gz, zd, &self.params[conv], x_dims.c)?
            }
            OpenIdx::Dense { weight, bias } => {
                let zd = x_dims.with_c(w0);
                let gz = be.activation_vjp(Activation::Tanh, &open.z, &g)?;
                grads.add(be, bias, 1.0, be.channel_sum(&gz, zd)?)?;
                grads.add(
                    be,
                    weight,
                    1.0,
                    be.conv_wgrad(ConvSpec::full1x1(), xb, x_dims, &gz, w0)?,
                )?;
                be.conv_t(ConvSpec::full1x1(), &gz, zd, &self.params[weight], x_dims.c)?
            }
        })
    }
}
