//! What a pass keeps for its backward: kept states in their storage, unit and layer tapes,
//! and the gradient accumulators.

use super::*;

/// The states of a step: one tensor, or the halves `[A, B]` of a hamiltonian state.
pub(super) type State<T> = Vec<T>;

/// A batch norm's running statistics to update after the step: the indices of its running mean
/// and variance, the batch statistics and the number of values per channel.
pub(super) type RunningUpdate<T> = (usize, usize, BnStats<T>, usize);

/// A state of a kept trajectory: as computed, or rounded to 16 bits ([`MemoryPolicy::storage`]).
pub(super) enum Slot<B: Backend> {
    Full(B::Buf),
    Packed(B::HBuf),
}

/// A kept state's values: borrowed, or unpacked for the caller.
pub(super) enum Held<'a, B: Backend> {
    Borrowed(&'a B::Buf),
    Unpacked(B::Buf),
}

impl<B: Backend> std::ops::Deref for Held<'_, B> {
    type Target = B::Buf;
    fn deref(&self) -> &B::Buf {
        match self {
            Held::Borrowed(b) => b,
            Held::Unpacked(b) => b,
        }
    }
}

impl<B: Backend> Slot<B> {
    /// `x` as a kept state in `storage`.
    pub(super) fn keep(be: &B, x: B::Buf, storage: Storage) -> Result<Self> {
        let mut slot = Slot::Full(x);
        slot.pack(be, storage)?;
        Ok(slot)
    }
    pub(super) fn get<'a>(&'a self, be: &B) -> Result<Held<'a, B>> {
        Ok(match self {
            Slot::Full(b) => Held::Borrowed(b),
            Slot::Packed(h) => Held::Unpacked(be.unpack16(h)?),
        })
    }
    /// The values as a buffer of the caller's: a copy, or the unpacked state.
    pub(super) fn to_buf(&self, be: &B) -> Result<B::Buf> {
        match self {
            Slot::Full(b) => be.copy(b),
            Slot::Packed(h) => be.unpack16(h),
        }
    }
    pub(super) fn into_buf(self, be: &B) -> Result<B::Buf> {
        match self {
            Slot::Full(b) => Ok(b),
            Slot::Packed(h) => be.unpack16(&h),
        }
    }
    /// Packs a state kept in full precision (the forward's last window) once nothing else
    /// needs it.
    pub(super) fn pack(&mut self, be: &B, storage: Storage) -> Result<()> {
        if let (Slot::Full(b), Storage::Bf16 | Storage::F16) = (&*self, storage) {
            *self = Slot::Packed(be.pack16(b, storage)?);
        }
        Ok(())
    }
}

/// What the backward pass has of a unit's states.
pub(super) enum Kept<B: Backend> {
    /// Nothing: recompute from the unit input (or the unit has no steps).
    Nothing,
    /// Every state `0..=nt`, in [`MemoryPolicy::storage`] (the last window in full precision until
    /// [`Engine::forward`] packs it).
    All(Vec<State<Slot<B>>>),
    AllFixed(Vec<State<B::IBuf>>),
    /// The last state (hamiltonian) or the last two (hyperbolic), oldest first.
    Last(Vec<State<B::Buf>>),
    LastFixed(Vec<State<B::IBuf>>),
    /// An `ode` unit's intervals.
    Ode(OdeKept<B>),
}

impl<B: Backend> Kept<B> {
    /// The states of a float unit's forward: under `store` those that left the window (already
    /// in the policy's storage) followed by the window in full precision; otherwise the window.
    pub(super) fn float(
        left: Vec<State<Slot<B>>>,
        window: impl IntoIterator<Item = State<B::Buf>>,
        keep_all: bool,
    ) -> Kept<B> {
        if keep_all {
            let mut all = left;
            all.extend(
                window
                    .into_iter()
                    .map(|st| st.into_iter().map(Slot::Full).collect()),
            );
            Kept::All(all)
        } else {
            Kept::Last(window.into_iter().collect())
        }
    }
}

pub(super) struct UnitTape<B: Backend> {
    /// The unit's input: absent inside a Haar leapfrog chain (after unit 0), where the next
    /// unit's first two states give this unit's last two back.
    pub(super) input: Option<B::Buf>,
    /// The unit's output, for the connective layer's backward (absent inside a Haar chain).
    pub(super) output: Option<B::Buf>,
    pub(super) kept: Kept<B>,
}

/// The explicit `Y_{-1}` of a leapfrog unit after a Haar connection; in fixed point `(Q_0,
/// Q_{-1})`, so that the chain stays in integers.
pub(super) enum Pre<B: Backend> {
    Float(B::Buf),
    Fixed(B::IBuf, B::IBuf),
}

/// The first two states `(Y_0, Y_{-1})` of a leapfrog unit in a Haar chain, rebuilt backwards.
pub(super) enum Pair<B: Backend> {
    Float(B::Buf, B::Buf),
    Fixed(B::IBuf, B::IBuf),
}

/// What the backward pass of one unit returns.
pub(super) struct UnitGrad<B: Backend> {
    /// Gradient of `Y_0` (with `Y_{-1} = Y_0`'s folded in unless `Y_{-1}` was explicit).
    pub(super) g: B::Buf,
    /// Gradient of an explicit `Y_{-1}`.
    pub(super) g_pre: Option<B::Buf>,
    /// `(Y_0, Y_{-1})` rebuilt, when asked for.
    pub(super) pair: Option<Pair<B>>,
    pub(super) drift: f64,
}

/// Saved for the backward pass of an opening or connective layer: the pre-normalisation (or
/// pre-activation) tensor and, with batch norm, the batch statistics.
pub(super) struct AffineTape<B: Backend> {
    pub(super) z: B::Buf,
    pub(super) stats: Option<BnStats<B::Buf>>,
}

pub(super) struct Tape<B: Backend> {
    pub(super) x: B::Buf,
    pub(super) x_dims: Dims,
    pub(super) open: AffineTape<B>,
    pub(super) units: Vec<UnitTape<B>>,
    pub(super) connects: Vec<Option<AffineTape<B>>>,
    pub(super) features: B::Buf,
}

/// Gradient accumulators, one per trainable parameter, allocated before the forward pass so that
/// they form one block of memory the plan can name.
pub(super) struct Grads<B: Backend> {
    pub(super) g: Vec<Option<B::Buf>>,
}

impl<B: Backend> Grads<B> {
    pub(super) fn add(&mut self, be: &B, idx: usize, scale: f64, v: B::Buf) -> Result<()> {
        match &mut self.g[idx] {
            Some(acc) => be.axpy(scale, &v, acc),
            None => Err(Error::Other(format!(
                "parameter {idx} has no gradient buffer"
            ))),
        }
    }
    pub(super) fn add_layer(
        &mut self,
        be: &B,
        l: &LayerIdx,
        scale: f64,
        g: LayerGrads<B::Buf>,
    ) -> Result<()> {
        for (&i, v) in l.op.weights.iter().zip(g.dop) {
            self.add(be, i, scale, v)?;
        }
        match (l.norm, g.dscale) {
            (NormIdx::Tv { scale: si, shift }, Some(ds)) => {
                self.add(be, si, scale, ds)?;
                self.add(be, shift, scale, g.dshift)
            }
            (NormIdx::Shift { shift }, _) => self.add(be, shift, scale, g.dshift),
            (NormIdx::Tv { .. }, None) => {
                Err(Error::Other("tvNorm without a scale gradient".into()))
            }
        }
    }
}

/// Packs the states of a kept trajectory still in full precision (the forward's last window).
pub(super) fn pack_window<B: Backend>(be: &B, kept: &mut Kept<B>, storage: Storage) -> Result<()> {
    if let Kept::All(states) = kept {
        for slot in states.iter_mut().flatten() {
            slot.pack(be, storage)?;
        }
    }
    Ok(())
}
