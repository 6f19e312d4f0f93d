//! What a layer part records of each CPython module's cached bytecode in its layer: the imports the module
//! runs as it is imported, read from the bytecode as the layer streams by (the optional `PYIM` section,
//! JSON). An image's index resolves them against its merged tree into what opening each module loads next
//! (see [`crate::NextFiles`]) without reading any bytecode again.

use serde::{Deserialize, Serialize};

use crate::FormatError;

/// The most imports recorded for one module.
pub const MAX_MODULE_IMPORTS: usize = 256;
/// The most modules recorded for one layer.
pub const MAX_LAYER_MODULES: usize = 1 << 16;

/// One `import` a module runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModuleImport {
    /// The dotted module name (empty for `from . import x`).
    pub name: String,
    /// 0 for an absolute import, else how many packages up a relative one starts (`from ..x` is 2).
    pub level: u32,
    /// The names of `from NAME import a, b` (each may be a submodule).
    pub fromlist: Vec<String>,
}

/// The imports of the bytecode in one tar entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleImports {
    /// Where the entry's bytes start in the uncompressed layer (its [`crate::TarEntry::data_offset`]).
    pub data_offset: u64,
    /// The CPython version the bytecode is for (`(3, 11)`).
    pub version: (u32, u32),
    pub imports: Vec<ModuleImport>,
}

/// The section's bytes.
pub(crate) fn encode(modules: &[ModuleImports]) -> Result<Vec<u8>, FormatError> {
    serde_json::to_vec(modules).map_err(FormatError::Meta)
}

/// Reads the section: `None` when it is not a list of at most [`MAX_LAYER_MODULES`] modules, each with at
/// most [`MAX_MODULE_IMPORTS`] imports, at offsets inside a layer of `uncompressed_size` bytes.
pub(crate) fn decode(raw: &[u8], uncompressed_size: u64) -> Option<Vec<ModuleImports>> {
    let modules: Vec<ModuleImports> = serde_json::from_slice(raw).ok()?;
    let fits = |m: &ModuleImports| m.imports.len() <= MAX_MODULE_IMPORTS && m.data_offset < uncompressed_size;
    (modules.len() <= MAX_LAYER_MODULES && modules.iter().all(fits)).then_some(modules)
}
