//! The forward pass of an invertible unit (leapfrog, Verlet) from its step rule: in floats,
//! keeping what the policy allows, or in fixed point. The rule's `levels` states form the
//! window a step reads; its `parts` split the channels.

use super::*;
use crate::steps::rule::{self, StepRule};

impl<B: Backend> Engine<B> {
    /// The state's parts: the input itself, or its channel halves.
    fn parts_of(&self, rule: &StepRule, input: &B::Buf, d: Dims) -> Result<State<B::Buf>> {
        let be = &self.backend;
        Ok(match rule.parts {
            1 => vec![be.copy(input)?],
            _ => {
                let (a, b) = be.split_channels(input, d, d.c / 2)?;
                vec![a, b]
            }
        })
    }

    /// The state's parts in fixed point.
    fn quantized_parts(
        &self,
        rule: &StepRule,
        input: &B::Buf,
        d: Dims,
        shift: u32,
    ) -> Result<State<B::IBuf>> {
        let be = &self.backend;
        if rule.parts == 1 {
            return Ok(vec![be.quantize(input, shift)?]);
        }
        let parts = self.parts_of(rule, input, d)?;
        parts.iter().map(|x| be.quantize(x, shift)).collect()
    }

    /// The unit output from the last state's parts.
    fn output_of(&self, parts: &[B::Buf], d: Dims) -> Result<B::Buf> {
        let be = &self.backend;
        match parts {
            [y] => be.copy(y),
            [a, b] => be.concat_channels(a, b, d, d.c / 2),
            _ => Err(Error::Other("a state of more than two parts".into())),
        }
    }

    /// Unit `k` forward in floats (from an explicit `Y_{-1}` inside a Haar chain); under
    /// `store` the states leaving the window are kept in the policy's storage.
    pub(super) fn invertible_forward(
        &self,
        k: usize,
        rule: &StepRule,
        input: &B::Buf,
        pre: Option<Pre<B>>,
        d: Dims,
        sched: MemoryPolicy,
    ) -> Result<(B::Buf, Kept<B>)> {
        let be = &self.backend;
        let kind = self.kind();
        let pd = d.with_c(d.c / rule.parts);
        let mut pre = match pre {
            None => None,
            Some(Pre::Float(p)) => Some(p),
            Some(Pre::Fixed(..)) => {
                return Err(Error::Other("fixed-point Y_-1 in a float unit".into()))
            }
        };
        let mut hist = vec![self.parts_of(rule, input, d)?];
        let mut left = Vec::new();
        for s in &self.layout.units[k].steps {
            let layers: Vec<_> = s.layers.iter().map(|l| self.layer(l)).collect();
            let n = hist.len();
            let cur: Vec<&B::Buf> = hist[n - 1].iter().collect();
            let prev: Option<Vec<&B::Buf>> = match (n > 1, &pre) {
                (true, _) => Some(hist[n - 2].iter().collect()),
                (false, Some(p)) => Some(vec![p]),
                (false, None) => None,
            };
            let next = rule::step(be, rule, kind, &layers, None, &cur, prev.as_deref(), pd)?;
            pre = None;
            hist.push(next);
            if hist.len() > rule.levels {
                let old = hist.remove(0);
                if sched.keep_all {
                    let kept = old.into_iter().map(|x| Slot::keep(be, x, sched.storage));
                    left.push(kept.collect::<Result<_>>()?);
                }
            }
        }
        let out = self.output_of(&hist[hist.len() - 1], d)?;
        Ok((out, Kept::float(left, hist, sched.keep_all)))
    }

    /// Unit `k` forward in fixed point with `shift` fractional bits, bit-exactly invertible.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn invertible_forward_fixed(
        &self,
        k: usize,
        rule: &StepRule,
        input: &B::Buf,
        pre: Option<Pre<B>>,
        d: Dims,
        sched: MemoryPolicy,
        shift: u32,
    ) -> Result<(B::Buf, Kept<B>)> {
        let be = &self.backend;
        let kind = self.kind();
        let pd = d.with_c(d.c / rule.parts);
        let (first, mut qpre) = match pre {
            None => (self.quantized_parts(rule, input, d, shift)?, None),
            Some(Pre::Fixed(q0, qm1)) => (vec![q0], Some(qm1)),
            Some(Pre::Float(p)) => {
                let first = self.quantized_parts(rule, input, d, shift)?;
                (first, Some(be.quantize(&p, shift)?))
            }
        };
        let mut hist = vec![first];
        for s in &self.layout.units[k].steps {
            let layers: Vec<_> = s.layers.iter().map(|l| self.layer(l)).collect();
            let n = hist.len();
            let cur: Vec<&B::IBuf> = hist[n - 1].iter().collect();
            let prev: Option<Vec<&B::IBuf>> = match (n > 1, &qpre) {
                (true, _) => Some(hist[n - 2].iter().collect()),
                (false, Some(p)) => Some(vec![p]),
                (false, None) => None,
            };
            let next = rule::step_fixed(be, rule, kind, &layers, &cur, prev.as_deref(), shift, pd)?;
            qpre = None;
            hist.push(next);
            if !sched.keep_all && hist.len() > rule.levels {
                hist.remove(0);
            }
        }
        let last = hist[hist.len() - 1]
            .iter()
            .map(|q| be.dequantize(q, shift))
            .collect::<Result<Vec<_>>>()?;
        let out = match last.len() {
            1 => last
                .into_iter()
                .next()
                .ok_or_else(|| Error::Other("empty state".into()))?,
            _ => self.output_of(&last, d)?,
        };
        Ok((
            out,
            if sched.keep_all {
                Kept::AllFixed(hist)
            } else {
                Kept::LastFixed(hist)
            },
        ))
    }
}
