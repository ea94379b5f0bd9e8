//! The parameter table: every weight tensor a graph references, by name, shape and role, with
//! its data once weights are bound. Names are the checkpoint names (the official PyTorch
//! state-dict keys by default); passes that derive tensors (folded weights, BN scale/shift) add
//! new entries under derived names and never edit a tensor another op still reads.

use crate::ParamId;
use std::collections::HashMap;
use std::sync::Arc;

/// What a parameter is for; decides whether PyTorch counts it among `parameters()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    Weight,
    Bias,
    BnGamma,
    BnBeta,
    BnRunningMean,
    BnRunningVar,
    /// Computed by a pass from other parameters (folded weights, prologue scale/shift).
    Derived,
}

impl ParamKind {
    /// Trainable parameters, as `sum(p.numel() for p in model.parameters())` counts them
    /// (running statistics are buffers, not parameters).
    pub fn is_trainable(self) -> bool {
        matches!(
            self,
            ParamKind::Weight | ParamKind::Bias | ParamKind::BnGamma | ParamKind::BnBeta
        )
    }
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    /// Row-major float32 data, present once weights are bound.
    pub data: Option<Arc<[f32]>>,
}

impl Param {
    pub fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// Parameters in insertion order, with a name index.
#[derive(Clone, Debug, Default)]
pub struct Params {
    entries: Vec<Param>,
    by_name: HashMap<String, ParamId>,
}

impl Params {
    /// Adds a parameter; returns `Err(existing)` when the name is taken.
    pub fn add(
        &mut self,
        name: String,
        shape: Vec<usize>,
        kind: ParamKind,
    ) -> Result<ParamId, ParamId> {
        if let Some(&id) = self.by_name.get(&name) {
            return Err(id);
        }
        let id = ParamId(u32::try_from(self.entries.len()).expect("fewer than 2^32 parameters"));
        self.by_name.insert(name.clone(), id);
        self.entries.push(Param {
            name,
            shape,
            kind,
            data: None,
        });
        Ok(id)
    }

    /// Adds a derived parameter, making the name unique by suffixing `#n` if needed. `data` is
    /// `None` when the parameters it derives from are unbound (structure-only compilation).
    pub fn add_derived(
        &mut self,
        name: &str,
        shape: Vec<usize>,
        data: Option<Vec<f32>>,
    ) -> ParamId {
        let mut unique = name.to_string();
        let mut n = 1;
        while self.by_name.contains_key(&unique) {
            n += 1;
            unique = format!("{name}#{n}");
        }
        let id = self
            .add(unique, shape, ParamKind::Derived)
            .unwrap_or_else(|id| id);
        self.entries[id.index()].data = data.map(Into::into);
        id
    }

    pub fn get(&self, id: ParamId) -> &Param {
        &self.entries[id.index()]
    }

    pub fn get_mut(&mut self, id: ParamId) -> &mut Param {
        &mut self.entries[id.index()]
    }

    pub fn by_name(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Param)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, p)| (ParamId(i as u32), p))
    }

    /// The data of a bound parameter.
    pub fn data(&self, id: ParamId) -> Option<&[f32]> {
        self.entries[id.index()].data.as_deref()
    }

    /// True when every parameter has data.
    pub fn all_bound(&self) -> bool {
        self.entries.iter().all(|p| p.data.is_some())
    }
}
