//! Fractal Perlin noise on a 2-D slice: the GAN's augmentation, which paints lesion-like
//! texture on healthy lungs for the generator to remove.
//!
//! Ken Perlin, *Improving noise*, SIGGRAPH 2002: gradient noise on the integer lattice with his
//! quintic fade and a permutation table, summed over octaves as fractal Brownian motion:
//! `Σ aᵏ · noise(fᵏ · p) / Σ |aᵏ|`, frequency ×`lacunarity` and amplitude ×`persistence` per
//! octave, the sum normalised by the amplitudes (as the `noise` Python package's `pnoise2`
//! does, which the original code called; a negative persistence alternates the octaves' signs).
//!
//! The permutation table is the seeded part: [`Permutation::seeded`] shuffles 0..256 with a
//! ChaCha generator, so the same seed gives the same noise on every machine.

use cubecl::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// A shuffled 0..256, repeated once so that lookups `perm[perm[x] + y]` need no wrap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permutation(pub [u8; 512]);

impl Permutation {
    /// The table of `seed`.
    pub fn seeded(seed: u64) -> Self {
        let mut p: Vec<u8> = (0..=255u8).collect();
        p.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let mut table = [0u8; 512];
        for (i, t) in table.iter_mut().enumerate() {
            *t = p[i % 256];
        }
        Permutation(table)
    }
}

/// One noise field's shape: its lattice spacing in pixels and its octaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fractal {
    /// Pixels per lattice cell of the first octave (the original draws 10–30).
    pub scale: f32,
    /// Octaves summed (the original: 10).
    pub octaves: u32,
    /// Amplitude factor per octave (the original: ±0.5).
    pub persistence: f32,
    /// Frequency factor per octave (the original: 2).
    pub lacunarity: f32,
}

fn fade(t: f32) -> f32 {
    t * t * t * (t * (t * 6.0 - 15.0) + 10.0)
}

fn lerp(t: f32, a: f32, b: f32) -> f32 {
    a + t * (b - a)
}

/// The dot product of the offset with one of eight gradient directions chosen by `hash`.
fn grad(hash: u8, x: f32, y: f32) -> f32 {
    match hash & 7 {
        0 => x + y,
        1 => -x + y,
        2 => x - y,
        3 => -x - y,
        4 => x,
        5 => -x,
        6 => y,
        _ => -y,
    }
}

/// Perlin noise at `(x, y)`, in about [−1, 1] (0 on lattice points).
pub fn noise2(perm: &Permutation, x: f32, y: f32) -> f32 {
    let p = &perm.0;
    let (xf, yf) = (x.floor(), y.floor());
    let (xi, yi) = ((xf as i64 & 255) as usize, (yf as i64 & 255) as usize);
    let (x, y) = (x - xf, y - yf);
    let (u, v) = (fade(x), fade(y));
    let a = p[xi] as usize + yi;
    let b = p[xi + 1] as usize + yi;
    lerp(
        v,
        lerp(u, grad(p[a], x, y), grad(p[b], x - 1.0, y)),
        lerp(
            u,
            grad(p[a + 1], x, y - 1.0),
            grad(p[b + 1], x - 1.0, y - 1.0),
        ),
    )
}

/// The fractal sum at pixel `(row, col)`.
pub fn fractal2(perm: &Permutation, f: &Fractal, row: usize, col: usize) -> f32 {
    let (mut freq, mut amp) = (1.0 / f.scale, 1.0f32);
    let (mut total, mut norm) = (0.0f32, 0.0f32);
    for _ in 0..f.octaves {
        total += amp * noise2(perm, col as f32 * freq, row as f32 * freq);
        norm += amp.abs();
        freq *= f.lacunarity;
        amp *= f.persistence;
    }
    if norm > 0.0 { total / norm } else { 0.0 }
}

/// A `rows × cols` slice of fractal noise, row-major: the CPU reference.
pub fn fractal_slice(perm: &Permutation, f: &Fractal, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| fractal2(perm, f, i / cols, i % cols))
        .collect()
}

/// The parameters of `slices` noise fields as the kernel reads them: the permutation tables
/// (512 entries each, as `u32`) and per slice `[scale, persistence, lacunarity]`.
fn kernel_params(fields: &[(Permutation, Fractal)]) -> (Vec<u32>, Vec<f32>) {
    let perms = fields
        .iter()
        .flat_map(|(p, _)| p.0.iter().map(|&v| u32::from(v)))
        .collect();
    let fractals = fields
        .iter()
        .flat_map(|(_, f)| [f.scale, f.persistence, f.lacunarity])
        .collect();
    (perms, fractals)
}

/// Several `rows × cols` noise fields, one per `(table, fractal)`, stacked: the CPU reference of
/// [`launch_fractal_slices`]. Every field must have the same octave count.
pub fn fractal_slices(fields: &[(Permutation, Fractal)], rows: usize, cols: usize) -> Vec<f32> {
    fields
        .iter()
        .flat_map(|(p, f)| fractal_slice(p, f, rows, cols))
        .collect()
}

#[cube]
fn fade_cube(t: f32) -> f32 {
    t * t * t * (t * (t * 6.0 - 15.0) + 10.0)
}

#[cube]
fn grad_cube(hash: u32, x: f32, y: f32) -> f32 {
    let h = hash & 7;
    // The eight directions of `grad`, as sign and axis selections.
    let mut g = -y;
    if h == 0 {
        g = x + y;
    } else if h == 1 {
        g = -x + y;
    } else if h == 2 {
        g = x - y;
    } else if h == 3 {
        g = -x - y;
    } else if h == 4 {
        g = x;
    } else if h == 5 {
        g = -x;
    } else if h == 6 {
        g = y;
    }
    g
}

#[cube]
fn noise2_cube(perms: &Array<u32>, base: u32, x: f32, y: f32) -> f32 {
    let xf = f32::floor(x);
    let yf = f32::floor(y);
    // Coordinates are non-negative (pixel positions times a positive frequency).
    let xi = u32::cast_from(xf) & 255;
    let yi = u32::cast_from(yf) & 255;
    let fx = x - xf;
    let fy = y - yf;
    let u = fade_cube(fx);
    let v = fade_cube(fy);
    let a = perms[(base + xi) as usize] + yi;
    let b = perms[(base + xi + 1) as usize] + yi;
    let g00 = grad_cube(perms[(base + a) as usize], fx, fy);
    let g10 = grad_cube(perms[(base + b) as usize], fx - 1.0, fy);
    let g01 = grad_cube(perms[(base + a + 1) as usize], fx, fy - 1.0);
    let g11 = grad_cube(perms[(base + b + 1) as usize], fx - 1.0, fy - 1.0);
    let lo = g00 + u * (g10 - g00);
    let hi = g01 + u * (g11 - g01);
    lo + v * (hi - lo)
}

/// One pixel of one field per unit.
#[cube(launch)]
pub fn fractal_slices_kernel(
    perms: &Array<u32>,
    fractals: &Array<f32>,
    output: &mut Array<f32>,
    rows: u32,
    cols: u32,
    octaves: u32,
) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS as u32;
    let s = i / (rows * cols);
    let row = (i / cols) % rows;
    let col = i % cols;
    let scale = fractals[(3 * s) as usize];
    let persistence = fractals[(3 * s + 1) as usize];
    let lacunarity = fractals[(3 * s + 2) as usize];
    let mut freq = 1.0 / scale;
    let mut amp = 1.0f32;
    let mut total = 0.0f32;
    let mut norm = 0.0f32;
    for _ in 0..octaves {
        total += amp
            * noise2_cube(
                perms,
                512 * s,
                f32::cast_from(col) * freq,
                f32::cast_from(row) * freq,
            );
        norm += f32::abs(amp);
        freq *= lacunarity;
        amp *= persistence;
    }
    let mut out = 0.0f32;
    if norm > 0.0 {
        out = total / norm;
    }
    output[ABSOLUTE_POS] = out;
}

/// Launches [`fractal_slices_kernel`] for `fields` into a new buffer of
/// `fields.len() · rows · cols` floats (the layout of [`fractal_slices`]).
pub fn launch_fractal_slices<R: Runtime>(
    client: &ComputeClient<R>,
    fields: &[(Permutation, Fractal)],
    rows: usize,
    cols: usize,
) -> cubecl::server::Handle {
    let octaves = fields.first().map_or(0, |(_, f)| f.octaves);
    assert!(
        fields.iter().all(|(_, f)| f.octaves == octaves),
        "one octave count per launch"
    );
    let n = fields.len() * rows * cols;
    let (perms, fractals) = kernel_params(fields);
    let out = client.empty(n.max(1) * 4);
    if n == 0 {
        return out;
    }
    let ph = client.create_from_slice(u32::as_bytes(&perms));
    let fh = client.create_from_slice(f32::as_bytes(&fractals));
    fractal_slices_kernel::launch::<R>(
        client,
        crate::cube_count_for(n, 256),
        CubeDim::new_1d(256),
        unsafe { ArrayArg::from_raw_parts(ph, perms.len()) },
        unsafe { ArrayArg::from_raw_parts(fh, fractals.len()) },
        unsafe { ArrayArg::from_raw_parts(out.clone(), n) },
        rows as u32,
        cols as u32,
        octaves,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: Fractal = Fractal {
        scale: 20.0,
        octaves: 10,
        persistence: 0.5,
        lacunarity: 2.0,
    };

    #[test]
    fn noise_vanishes_on_the_lattice_and_is_continuous_between() {
        let perm = Permutation::seeded(3);
        for (x, y) in [(0.0, 0.0), (5.0, 7.0), (255.0, 1.0)] {
            assert_eq!(noise2(&perm, x, y), 0.0);
        }
        // Lipschitz: the gradients are at most √2 and the fade is smooth, so small steps give
        // small changes.
        for i in 0..1000 {
            let (x, y) = (i as f32 * 0.37, i as f32 * 0.11);
            let d = (noise2(&perm, x, y) - noise2(&perm, x + 1e-3, y)).abs();
            assert!(d < 1e-2, "{d} at {x}, {y}");
        }
    }

    #[test]
    fn fractal_noise_is_seeded_bounded_and_textured() {
        let a = fractal_slice(&Permutation::seeded(1), &ORIGINAL, 64, 64);
        let b = fractal_slice(&Permutation::seeded(1), &ORIGINAL, 64, 64);
        let c = fractal_slice(&Permutation::seeded(2), &ORIGINAL, 64, 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| v.abs() <= 1.0));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!(var > 1e-3, "flat noise: variance {var}");
        // Alternating octaves (persistence −0.5) give a different field from the same table.
        let alt = Fractal {
            persistence: -0.5,
            ..ORIGINAL
        };
        assert_ne!(a, fractal_slice(&Permutation::seeded(1), &alt, 64, 64));
    }

    #[test]
    fn wgpu_kernel_matches_the_cpu_reference_on_random_fields() {
        use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
        use rand::Rng;
        let client = WgpuRuntime::client(&WgpuDevice::default());
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let fields: Vec<(Permutation, Fractal)> = (0..5)
            .map(|_| {
                let f = Fractal {
                    scale: rng.random_range(5.0..30.0),
                    persistence: if rng.random_bool(0.5) { 0.5 } else { -0.5 },
                    ..ORIGINAL
                };
                (Permutation::seeded(rng.random()), f)
            })
            .collect();
        let (rows, cols) = (37, 53);
        let want = fractal_slices(&fields, rows, cols);
        let out = launch_fractal_slices(&client, &fields, rows, cols);
        let got = f32::from_bytes(&client.read_one_unchecked(out)).to_vec();
        let err = crate::max_abs_diff(&want, &got);
        assert!(err < 1e-4, "max error {err}");
        assert!(
            want.iter().any(|v| v.abs() > 0.1),
            "a field worth comparing"
        );
    }
}
