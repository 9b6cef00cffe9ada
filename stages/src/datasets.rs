//! Dataset sources for CT: `mosmed` (MosMedData's directory layout) and `nifti` (a glob).
//!
//! ```yaml
//! datasets:
//!   mosmed: {mosmed: {root: /data/COVID19_1110}}     # studies/CT-k/study_NNNN.nii.gz, masks/…
//!   scans:  {nifti: "scans/*.nii.gz"}
//! ```
//! Every file is checked to be a readable NIfTI header when the pipeline is planned, and hashed:
//! the item's digest is its content's (with its mask's), so a changed file re-runs its tasks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use covflow_engine::{DatasetSource, GlobSource, GlobSpec, Item, valid_item_id};

fn check_header(path: &Path) -> Result<(), String> {
    covflow_imaging::volume::read_header(path)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn digest_of(paths: &[&Path]) -> Result<String, String> {
    let mut h = blake3::Hasher::new();
    for (p, r) in paths.iter().zip(covflow_cache::hash_files(paths)) {
        let (hex, _) = r.map_err(|e| format!("{}: {e}", p.display()))?;
        h.update(hex.as_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}

fn id_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split('.').next().unwrap_or(&name).to_string()
}

/// `mosmed: {root: DIR}`: `DIR/studies/CT-0…CT-4/study_NNNN.nii.gz`, with the expert mask
/// `DIR/masks/study_NNNN_mask.nii.gz` when there is one, and a lung mask
/// `DIR/lungs/study_NNNN_lung.nii.gz` when there is one (`covflow phantom` writes them). Items
/// carry `path`, `category`, and `mask` / `lung` when present.
pub struct MosmedSource;

/// A `mosmed` dataset's declaration.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MosmedSpec {
    mosmed: MosmedRoot,
}

/// The mapping under `mosmed:`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MosmedRoot {
    /// The folder holding `studies/` (and `masks/`, `lungs/`), relative to the pipeline file.
    root: PathBuf,
}

impl DatasetSource for MosmedSource {
    type Spec = MosmedSpec;

    fn kind(&self) -> &'static str {
        "mosmed"
    }

    fn items(&self, spec: &MosmedSpec, dir: &Path) -> Result<Vec<Item>, String> {
        let root = dir.join(&spec.mosmed.root);
        let studies = root.join("studies");
        if !studies.is_dir() {
            return Err(format!(
                "{}: no studies/ folder (expected studies/CT-0 … CT-4/study_NNNN.nii.gz)\n  help: point `root` at your MosMedData copy (`--set params.root=DIR`); without the data, `covflow run pipelines/demo.yaml` runs the same chain on phantoms",
                root.display()
            ));
        }
        let mut found: Vec<(String, PathBuf, String)> = Vec::new();
        for cat in 0..=4 {
            let d = studies.join(format!("CT-{cat}"));
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                let name = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if name.ends_with(".nii.gz") || name.ends_with(".nii") {
                    found.push((id_of(&p), p, format!("CT-{cat}")));
                }
            }
        }
        if found.is_empty() {
            return Err(format!(
                "{}: no studies found under CT-0 … CT-4",
                studies.display()
            ));
        }
        found.sort();
        let mut items = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (id, path, category) in found {
            if !valid_item_id(&id) {
                return Err(format!(
                    "{}: `{id}` is not a usable study id",
                    path.display()
                ));
            }
            if !seen.insert(id.clone()) {
                return Err(format!(
                    "{}: study `{id}` appears in two categories",
                    path.display()
                ));
            }
            check_header(&path)?;
            let mut attrs = BTreeMap::new();
            attrs.insert("path".into(), path.to_string_lossy().into_owned());
            attrs.insert("category".into(), category);
            // The expert lesion mask (50 of MosMed's studies) and a lung mask (phantom trees
            // carry one), each part of the item's digest when present.
            let mut files = vec![path.clone()];
            for (attr, dir, suffix) in [("mask", "masks", "mask"), ("lung", "lungs", "lung")] {
                let p = root.join(dir).join(format!("{id}_{suffix}.nii.gz"));
                if p.is_file() {
                    check_header(&p)?;
                    attrs.insert(attr.into(), p.to_string_lossy().into_owned());
                    files.push(p);
                }
            }
            let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
            let digest = digest_of(&refs)?;
            items.push(Item { id, digest, attrs });
        }
        Ok(items)
    }
}

/// `nifti: "PATTERN"`: every NIfTI file matching the glob (relative to the pipeline file); the id
/// is the file name without extensions.
pub struct NiftiSource;

/// A `nifti` dataset's declaration.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NiftiSpec {
    /// The pattern, relative to the pipeline file.
    nifti: String,
}

impl DatasetSource for NiftiSource {
    type Spec = NiftiSpec;

    fn kind(&self) -> &'static str {
        "nifti"
    }

    fn check(&self, spec: &NiftiSpec) -> Result<(), String> {
        GlobSource.check(&GlobSpec {
            glob: spec.nifti.clone(),
        })
    }

    fn items(&self, spec: &NiftiSpec, dir: &Path) -> Result<Vec<Item>, String> {
        // The engine's glob source does the matching, ids and content digests; this adds the
        // NIfTI header check.
        let pattern = &spec.nifti;
        let glob = GlobSpec {
            glob: pattern.clone(),
        };
        let items = GlobSource.items(&glob, dir)?;
        if items.is_empty() {
            return Err(format!("no file matches `{}`", dir.join(pattern).display()));
        }
        for item in &items {
            check_header(Path::new(&item.attrs["path"]))?;
        }
        Ok(items)
    }
}
