//! A kernel's uniform parameter block, declared once: [`kernel_params!`]
//! writes the `#[repr(C)]` host struct and a description of its layout (each
//! field's name, offset, scalar type and count), and the kernel cache checks
//! that description against the WGSL struct naga reflects at binding 0 of
//! every kernel, before the pipeline exists (`kernel::validate`). A field
//! out of place, a padding slip or a renamed member is then an error naming
//! the kernel, not wrong numbers.
//!
//! The rule: the WGSL struct's members and the host's fields agree in name,
//! byte offset and scalar type, padding aside (members named `pad…` or
//! `_pad…`, on either side, may be split or merged freely), and the WGSL
//! struct's size is the host struct's.

/// The scalar type of a parameter (or of each element of an array or vector of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scalar {
    U32,
    I32,
    F32,
}

/// One field of a parameter block as the host lays it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Field {
    pub name: &'static str,
    /// Bytes from the start of the block.
    pub offset: u32,
    pub scalar: Scalar,
    /// Scalars in the field (an array or vector counts its elements).
    pub count: u32,
}

impl Field {
    /// Padding is free to be laid out differently on either side.
    pub fn is_padding(name: &str) -> bool {
        name.starts_with("_pad") || name.starts_with("pad")
    }
}

/// A host type that may be a parameter field.
pub trait ParamType {
    const SCALAR: Scalar;
    const COUNT: u32;
}

impl ParamType for u32 {
    const SCALAR: Scalar = Scalar::U32;
    const COUNT: u32 = 1;
}
impl ParamType for i32 {
    const SCALAR: Scalar = Scalar::I32;
    const COUNT: u32 = 1;
}
impl ParamType for f32 {
    const SCALAR: Scalar = Scalar::F32;
    const COUNT: u32 = 1;
}
impl<T: ParamType, const N: usize> ParamType for [T; N] {
    const SCALAR: Scalar = T::SCALAR;
    const COUNT: u32 = T::COUNT * N as u32;
}

/// A kernel's parameter block: plain data with its declared layout.
pub trait KernelParams: bytemuck::Pod {
    const FIELDS: &'static [Field];
}

/// The block of kernels that take no parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NoParams {
    _pad: [u32; 0],
}

impl KernelParams for NoParams {
    const FIELDS: &'static [Field] = &[];
}

/// Declares a kernel's uniform parameter block: the `#[repr(C)]`, `Pod`
/// host struct and its [`KernelParams`] layout, from one list of fields.
///
/// ```ignore
/// kernel_params! {
///     /// What the shader's `Params` holds.
///     struct Params { n: u32, scale: f32, _pad: [u32; 2] }
/// }
/// ```
#[macro_export]
macro_rules! kernel_params {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name { $($(#[$fmeta])* $fvis $field: $ty),* }

        impl $crate::gpu::params::KernelParams for $name {
            const FIELDS: &'static [$crate::gpu::params::Field] = &[$(
                $crate::gpu::params::Field {
                    name: stringify!($field),
                    offset: ::core::mem::offset_of!($name, $field) as u32,
                    scalar: <$ty as $crate::gpu::params::ParamType>::SCALAR,
                    count: <$ty as $crate::gpu::params::ParamType>::COUNT,
                }
            ),*];
        }
    };
}

/// The host block's size in bytes, from its layout (the last field's end).
pub fn layout_size(fields: &[Field]) -> u32 {
    fields.iter().map(|f| f.offset + 4 * f.count).max().unwrap_or(0)
}

/// Compares the host layout with the WGSL uniform struct of `module` at
/// group 0, binding 0 (none when `fields` is empty). Returns what differs.
pub fn check_against(module: &naga::Module, fields: &[Field]) -> std::result::Result<(), String> {
    let uniform = module.global_variables.iter().find_map(|(_, v)| {
        let rb = v.binding.as_ref()?;
        (rb.group == 0 && rb.binding == 0 && v.space == naga::AddressSpace::Uniform).then_some(v.ty)
    });
    let Some(ty) = uniform else {
        return if fields.is_empty() {
            Ok(())
        } else {
            Err(format!("the shader has no uniform at binding 0, but the host passes {} parameter fields", fields.len()))
        };
    };
    if fields.is_empty() {
        return Err("the shader declares a uniform at binding 0, but the host declares no parameters for this kernel".into());
    }
    let naga::TypeInner::Struct { members, span } = &module.types[ty].inner else {
        return Err("the uniform at binding 0 is not a struct".into());
    };
    let mut shader = Vec::new();
    for m in members {
        let name = m.name.clone().unwrap_or_default();
        let (scalar, count) = flatten(module, m.ty).ok_or_else(|| format!("member `{name}` has a type the host cannot mirror"))?;
        shader.push((name, m.offset, scalar, count));
    }
    let real_shader: Vec<_> = shader.iter().filter(|(n, ..)| !Field::is_padding(n)).collect();
    let real_host: Vec<_> = fields.iter().filter(|f| !Field::is_padding(f.name)).collect();
    for f in &real_host {
        match real_shader.iter().find(|(n, ..)| n == f.name) {
            None => return Err(format!("host field `{}` (offset {}) has no member of that name in the shader", f.name, f.offset)),
            Some((_, off, sc, n)) if (*off, *sc, *n) != (f.offset, f.scalar, f.count) => {
                return Err(format!(
                    "`{}`: the host has {:?}×{} at offset {}, the shader {:?}×{} at offset {}",
                    f.name, f.scalar, f.count, f.offset, sc, n, off
                ));
            }
            Some(_) => {}
        }
    }
    if let Some((n, off, ..)) = real_shader.iter().find(|(n, ..)| !real_host.iter().any(|f| f.name == n)) {
        return Err(format!("shader member `{n}` (offset {off}) has no host field of that name"));
    }
    let host_size = layout_size(fields);
    if host_size != *span {
        return Err(format!("the host block is {host_size} bytes, the shader's {span}"));
    }
    Ok(())
}

/// (scalar type, scalar count) of a member type, if it is made of 32-bit scalars.
fn flatten(module: &naga::Module, ty: naga::Handle<naga::Type>) -> Option<(Scalar, u32)> {
    let scalar = |s: naga::Scalar| match (s.kind, s.width) {
        (naga::ScalarKind::Uint, 4) => Some(Scalar::U32),
        (naga::ScalarKind::Sint, 4) => Some(Scalar::I32),
        (naga::ScalarKind::Float, 4) => Some(Scalar::F32),
        _ => None,
    };
    match &module.types[ty].inner {
        naga::TypeInner::Scalar(s) => Some((scalar(*s)?, 1)),
        naga::TypeInner::Vector { size, scalar: s } => Some((scalar(*s)?, *size as u32)),
        naga::TypeInner::Array { base, size: naga::ArraySize::Constant(n), stride } => {
            let (s, c) = flatten(module, *base)?;
            // Only tightly packed arrays mirror a Rust array.
            (*stride == 4 * c).then_some((s, c * n.get()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    kernel_params! {
        struct Example { n: u32, scale: f32, _pad: [u32; 2], v: [f32; 4] }
    }

    fn module(src: &str) -> naga::Module {
        naga::front::wgsl::parse_str(src).unwrap()
    }

    const GOOD: &str = "struct P { n: u32, scale: f32, _pad0: u32, _pad1: u32, v: vec4<f32> }
        @group(0) @binding(0) var<uniform> p: P;
        @compute @workgroup_size(1) fn main() { _ = p.n; }";

    #[test]
    fn the_macro_lays_out_the_fields_in_order() {
        let f = Example::FIELDS;
        assert_eq!(f.iter().map(|f| (f.name, f.offset, f.count)).collect::<Vec<_>>(), [("n", 0, 1), ("scale", 4, 1), ("_pad", 8, 2), ("v", 16, 4)]);
        assert_eq!(layout_size(f), std::mem::size_of::<Example>() as u32);
    }

    #[test]
    fn matching_layouts_pass_and_padding_may_differ_in_shape() {
        check_against(&module(GOOD), Example::FIELDS).unwrap();
    }

    #[test]
    fn a_misplaced_or_renamed_or_retyped_field_is_reported() {
        // scale and n swapped: same size, wrong offsets.
        let swapped = GOOD.replace("n: u32, scale: f32", "scale: f32, n: u32");
        assert!(check_against(&module(&swapped), Example::FIELDS).unwrap_err().contains("offset"));
        let renamed = GOOD.replace("scale: f32", "alpha: f32");
        assert!(check_against(&module(&renamed), Example::FIELDS).unwrap_err().contains("scale"));
        let retyped = GOOD.replace("scale: f32", "scale: u32");
        assert!(check_against(&module(&retyped), Example::FIELDS).unwrap_err().contains("F32"));
        // Padding the host does not have: v moves to offset 32.
        let long = GOOD.replace("_pad1: u32, ", "_pad1: u32, _pad2: vec4<u32>, ");
        assert!(check_against(&module(&long), Example::FIELDS).unwrap_err().contains("`v`"));
        // No uniform where the host passes one, and the other way round.
        let none = "@compute @workgroup_size(1) fn main() {}";
        assert!(check_against(&module(none), Example::FIELDS).is_err());
        assert!(check_against(&module(GOOD), NoParams::FIELDS).is_err());
        check_against(&module(none), NoParams::FIELDS).unwrap();
    }
}
