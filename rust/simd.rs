//! Which vector instructions the hot loops use, chosen once per process at run time.
//!
//! The hot loops are written once (plain Rust over fixed-size arrays, plus a few AVX-512 / AVX2
//! intrinsics for compare masks) and compiled once per instruction set; a wheel built for
//! generic x86-64 then runs at full width on the machine it lands on. Every variant performs the
//! same IEEE float64 operations (no fused multiply-adds), so all give the same bits.
//! `DENSE_PLANTAIN_SIMD=baseline|avx2` lowers the choice (tests use that to compare variants).

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// An instruction set the hot loops are compiled for.
pub enum Isa {
    /// AVX-512 F/DQ/VL with popcnt: 8 float64 lanes, mask registers.
    Avx512,
    /// AVX2 with popcnt: 4 float64 lanes.
    Avx2,
    /// Whatever the build target allows (SSE2 on x86-64).
    Baseline,
}

impl Isa {
    /// The name used in provenance and in `DENSE_PLANTAIN_SIMD`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Baseline => "baseline",
        }
    }
}

/// The instruction set of this process's hot loops.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detect();
        match std::env::var("DENSE_PLANTAIN_SIMD").ok().as_deref() {
            Some("baseline") => Isa::Baseline,
            Some("avx2") if best != Isa::Baseline => Isa::Avx2,
            _ => best,
        }
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    let popcnt = is_x86_feature_detected!("popcnt");
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
        && popcnt
    {
        Isa::Avx512
    } else if is_x86_feature_detected!("avx2") && popcnt {
        Isa::Avx2
    } else {
        Isa::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Baseline
}

/// Defines `fn $name(args)` that runs `$body(args)` compiled for this process's instruction set
/// ([`isa`]): `$body` (an `#[inline(always)]` function) is built into an AVX-512 and an AVX2
/// copy with `#[target_feature]`, and called plain otherwise.
macro_rules! by_isa {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
            unsafe fn avx512($($arg: $ty),*) {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            unsafe fn avx2($($arg: $ty),*) {
                $body($($arg),*)
            }
            match $crate::simd::isa() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: isa() checked that the CPU has these features.
                $crate::simd::Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                $crate::simd::Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}
pub(crate) use by_isa;
