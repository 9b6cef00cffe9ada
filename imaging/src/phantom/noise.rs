//! Smooth deterministic noise: the texture of parenchyma and lesions, lesion boundaries, and
//! scanner noise.

/// Value noise in [-1, 1] on a lattice of `cell` mm, smoothstep-interpolated.
pub(crate) struct ValueNoise {
    pub(crate) seed: u64,
    pub(crate) cell: f64,
}

impl ValueNoise {
    fn lattice(&self, x: i64, y: i64, z: i64) -> f64 {
        let mut h = self.seed
            ^ (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            ^ (z as u64).wrapping_mul(0x1656_67B1_9E37_79F9);
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 33;
        (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// The noise at `p` (mm).
    pub(crate) fn at(&self, p: [f64; 3]) -> f64 {
        let f = |v: f64| v / self.cell;
        let (x, y, z) = (f(p[0]), f(p[1]), f(p[2]));
        let (x0, y0, z0) = (x.floor(), y.floor(), z.floor());
        let (tx, ty, tz) = (x - x0, y - y0, z - z0);
        let s = |t: f64| t * t * (3.0 - 2.0 * t);
        let (sx, sy, sz) = (s(tx), s(ty), s(tz));
        let (xi, yi, zi) = (x0 as i64, y0 as i64, z0 as i64);
        let mut acc = 0.0;
        for (dz, wz) in [(0, 1.0 - sz), (1, sz)] {
            for (dy, wy) in [(0, 1.0 - sy), (1, sy)] {
                for (dx, wx) in [(0, 1.0 - sx), (1, sx)] {
                    acc += wx * wy * wz * self.lattice(xi + dx, yi + dy, zi + dz);
                }
            }
        }
        acc
    }
}
