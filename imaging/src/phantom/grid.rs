//! Where voxels sit in the patient: millimetres with the origin at the volume's centre (x toward
//! the patient's left, y posterior, z cranial), so one anatomy serves every grid.

use std::ops::Range;

/// A phantom's voxel grid.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid {
    pub(crate) dims: [usize; 3],
    pub(crate) spacing: [f64; 3],
    /// In-plane field of view, mm.
    pub(crate) fov: f64,
    /// Extent along z, mm.
    pub(crate) zext: f64,
}

impl Grid {
    pub(crate) fn new(dims: [usize; 3], spacing: [f64; 3]) -> Self {
        Self {
            dims,
            spacing,
            fov: dims[0] as f64 * spacing[0],
            zext: dims[2] as f64 * spacing[2],
        }
    }

    /// The centre of voxel (i, j, k), mm.
    pub(crate) fn centre(&self, i: usize, j: usize, k: usize) -> [f64; 3] {
        [
            (i as f64 + 0.5) * self.spacing[0] - self.fov / 2.0,
            (j as f64 + 0.5) * self.spacing[1] - self.fov / 2.0,
            (k as f64 + 0.5) * self.spacing[2] - self.zext / 2.0,
        ]
    }

    /// The voxel-to-world (RAS+) affine of this grid written in MosMed's LAS order, with the
    /// j axis reversed against [`Grid::centre`]'s (whose y grows toward the patient's back):
    /// world x = −x (toward the patient's right), world y = −y (anterior), world z = z.
    pub(crate) fn las_affine(&self) -> [[f64; 4]; 4] {
        let [sx, sy, sz] = self.spacing;
        [
            [-sx, 0.0, 0.0, self.fov / 2.0 - sx / 2.0],
            [0.0, sy, 0.0, -self.fov / 2.0 + sy / 2.0],
            [0.0, 0.0, sz, -self.zext / 2.0 + sz / 2.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    /// The (fractional) voxel index of point `p`, mm.
    pub(crate) fn index_of(&self, p: [f64; 3]) -> [f64; 3] {
        [
            (p[0] + self.fov / 2.0) / self.spacing[0] - 0.5,
            (p[1] + self.fov / 2.0) / self.spacing[1] - 0.5,
            (p[2] + self.zext / 2.0) / self.spacing[2] - 0.5,
        ]
    }

    /// The voxels of the box between `lo` and `hi` (mm), clipped to the grid.
    pub(crate) fn voxels_between(&self, lo: [f64; 3], hi: [f64; 3]) -> [Range<usize>; 3] {
        let (lo, hi) = (self.index_of(lo), self.index_of(hi));
        [0, 1, 2].map(|a| {
            (lo[a].floor().max(0.0) as usize)
                ..((hi[a].ceil() + 1.0).max(0.0) as usize).min(self.dims[a])
        })
    }

    /// Calls `f` for each voxel of the box between `lo` and `hi` (mm), z outermost.
    pub(crate) fn for_each_between(
        &self,
        lo: [f64; 3],
        hi: [f64; 3],
        mut f: impl FnMut([usize; 3], [f64; 3]),
    ) {
        let [ri, rj, rk] = self.voxels_between(lo, hi);
        for k in rk {
            for j in rj.clone() {
                for i in ri.clone() {
                    f([i, j, k], self.centre(i, j, k));
                }
            }
        }
    }
}
