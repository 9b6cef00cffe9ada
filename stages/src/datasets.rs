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

use covflow_engine::{DatasetSource, GlobSource, Item, valid_item_id};
use serde_json::Value as Json;

fn check_header(path: &Path) -> Result<(), String> {
    nifti::NiftiHeader::from_file(path)
        .map(|_| ())
        .map_err(|e| format!("{}: not a readable NIfTI file ({e})", path.display()))
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

impl DatasetSource for MosmedSource {
    fn kind(&self) -> &'static str {
        "mosmed"
    }

    fn check(&self, spec: &Json) -> Result<(), String> {
        let m = spec["mosmed"]
            .as_object()
            .ok_or("`mosmed` takes a mapping: {root: DIR}")?;
        for k in m.keys() {
            if k != "root" {
                return Err(format!("unknown field `{k}` in mosmed (root)"));
            }
        }
        m.get("root")
            .and_then(|r| r.as_str())
            .ok_or("mosmed needs `root: DIR` (the folder holding studies/ and masks/)")?;
        Ok(())
    }

    fn items(&self, spec: &Json, dir: &Path) -> Result<Vec<Item>, String> {
        let root = dir.join(
            spec["mosmed"]["root"]
                .as_str()
                .ok_or("mosmed needs `root`")?,
        );
        let studies = root.join("studies");
        if !studies.is_dir() {
            return Err(format!(
                "{}: no studies/ folder (expected studies/CT-0 … CT-4/study_NNNN.nii.gz)",
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

impl DatasetSource for NiftiSource {
    fn kind(&self) -> &'static str {
        "nifti"
    }

    fn check(&self, spec: &Json) -> Result<(), String> {
        spec["nifti"]
            .as_str()
            .ok_or("`nifti` takes a glob pattern, e.g. `nifti: \"scans/*.nii.gz\"`")?;
        Ok(())
    }

    fn items(&self, spec: &Json, dir: &Path) -> Result<Vec<Item>, String> {
        // The engine's glob source does the matching, ids and content digests; this adds the
        // NIfTI header check.
        let pattern = spec["nifti"].as_str().ok_or("`nifti` must be a string")?;
        let items = GlobSource.items(&serde_json::json!({ "glob": pattern }), dir)?;
        if items.is_empty() {
            return Err(format!("no file matches `{}`", dir.join(pattern).display()));
        }
        for item in &items {
            check_header(Path::new(&item.attrs["path"]))?;
        }
        Ok(items)
    }
}
