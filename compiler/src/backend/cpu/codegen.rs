//! Cranelift code generation of the forward function, ahead of time.
//!
//! The generated `abi::Forward` runs the schedule: for every step it loops over the images
//! `first..end` of the batch (the runtime hands image ranges to its threads), computes the output and input-piece addresses from the plan's offsets (baked in
//! as immediates: `arena + offset * batch + image * bytes_per_image`), fills a piece table on
//! its stack, and calls the step's kernel through the kernel table it is given, returning the
//! first non-zero status tagged with its step: `(step + 1) * 256 + status`. It reaches nothing else: no direct calls, no data outside its
//! arguments, so the code carries no relocations (asserted) and runs wherever it is mapped.
//!
//! The ISA is baseline x86-64 or baseline aarch64 ([`CpuArch`], no host features, whatever the
//! host: cross compilation is a flag): the driver is integer code, and the kernels pick
//! AVX2/FMA or NEON themselves at run time, so one model.bin serves every CPU of its
//! architecture. Both use the platform's C calling convention (System V on x86-64, AAPCS64 on
//! aarch64: Cranelift's `SystemV` on either), as the runtime's `extern "C"` kernels do.
//! Must not know about the IR: it sees only [`CallPlan`]s.

use super::super::BackendError;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    AbiParam, BlockArg, InstBuilder, MemFlagsData, Signature, StackSlotData, StackSlotKind, types,
};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{Context, control::ControlPlane};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};

/// Where one image's slice of a buffer lives: `arena + offset_per_image * batch + image *
/// bytes_per_image`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferRef {
    pub offset_per_image: u64,
    pub bytes_per_image: u64,
}

/// One kernel call per image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallPlan {
    /// Index into the kernel table (`abi::KERNEL_*`).
    pub kernel: usize,
    /// Byte offset of the descriptor in the constant section.
    pub desc_offset: u64,
    pub output: BufferRef,
    /// Input pieces and their channel counts.
    pub pieces: Vec<(BufferRef, u64)>,
}

/// The machine architecture the forward function is compiled for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CpuArch {
    /// x86-64 (baseline: SSE2).
    #[default]
    X86_64,
    /// 64-bit ARM (baseline ARMv8-A: NEON is part of it).
    Aarch64,
}

impl CpuArch {
    /// The name model.bin records, `std::env::consts::ARCH` of the machines it runs on.
    pub fn name(self) -> &'static str {
        match self {
            CpuArch::X86_64 => "x86_64",
            CpuArch::Aarch64 => "aarch64",
        }
    }

    /// The architecture of the machine this compiler runs on, if it can compile for it.
    pub fn host() -> Option<CpuArch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(CpuArch::X86_64),
            "aarch64" => Some(CpuArch::Aarch64),
            _ => None,
        }
    }
}

/// The compiled forward function.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub code: Vec<u8>,
    /// Features the code needs (none beyond the architecture's baseline).
    pub features: Vec<String>,
    pub arch: String,
}

fn isa(arch: CpuArch) -> Result<OwnedTargetIsa, BackendError> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v)
            .map_err(|e| BackendError::Cranelift(format!("setting {k}={v}: {e}")))
    };
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "is_pic", "true")?;
    set(&mut flags, "enable_probestack", "true")?;
    set(&mut flags, "probestack_strategy", "inline")?;
    let name = arch.name();
    let builder = cranelift_codegen::isa::lookup_by_name(name)
        .map_err(|e| BackendError::Cranelift(format!("{name} backend: {e}")))?;
    builder
        .finish(settings::Flags::new(flags))
        .map_err(|e| BackendError::Cranelift(format!("building the ISA: {e}")))
}

/// Compiles the forward function for a list of calls, for `arch`.
pub fn compile(calls: &[CallPlan], arch: CpuArch) -> Result<Compiled, BackendError> {
    let isa = isa(arch)?;
    let ptr = types::I64;
    let call_conv = CallConv::SystemV;
    let mut sig = Signature::new(call_conv);
    for _ in 0..5 {
        sig.params.push(AbiParam::new(ptr)); // table, arena, weights, consts, kernel context
    }
    for _ in 0..3 {
        sig.params.push(AbiParam::new(types::I64)); // batch, first image, end image
    }
    sig.returns.push(AbiParam::new(types::I32));
    let mut kernel_sig = Signature::new(call_conv);
    for _ in 0..5 {
        kernel_sig.params.push(AbiParam::new(ptr)); // desc, pieces, out, weights, context
    }
    kernel_sig.returns.push(AbiParam::new(types::I32));

    let mut ctx = Context::new();
    ctx.func.signature = sig;
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
    let kernel_sig = b.import_signature(kernel_sig);
    let flags = MemFlagsData::trusted();
    let max_pieces = calls
        .iter()
        .map(|c| c.pieces.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let slot_bytes = u32::try_from(max_pieces * 16).map_err(|_| BackendError::TooLarge {
        what: format!("{max_pieces} input pieces"),
    })?;
    let slot = b.create_sized_stack_slot(StackSlotData::new(
        StackSlotKind::ExplicitSlot,
        slot_bytes,
        4,
    ));

    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let params = b.block_params(entry).to_vec();
    let (table, arena, weights, consts, context, batch, first, end) = (
        params[0], params[1], params[2], params[3], params[4], params[5], params[6], params[7],
    );
    let fail = b.create_block();
    let status_param = b.append_block_param(fail, types::I32);
    let image = b.declare_var(types::I64);

    let iconst =
        |b: &mut FunctionBuilder, v: u64| -> Result<cranelift_codegen::ir::Value, BackendError> {
            let v = i64::try_from(v).map_err(|_| BackendError::TooLarge {
                what: format!("offset {v}"),
            })?;
            Ok(b.ins().iconst(types::I64, v))
        };
    // arena + offset * batch + image * bytes
    let address = |b: &mut FunctionBuilder,
                   r: BufferRef,
                   image: cranelift_codegen::ir::Value|
     -> Result<cranelift_codegen::ir::Value, BackendError> {
        let off = iconst(b, r.offset_per_image)?;
        let scaled = b.ins().imul(off, batch);
        let bytes = iconst(b, r.bytes_per_image)?;
        let within = b.ins().imul(bytes, image);
        let base = b.ins().iadd(arena, scaled);
        Ok(b.ins().iadd(base, within))
    };

    for (index, call) in calls.iter().enumerate() {
        let header = b.create_block();
        let body = b.create_block();
        let next = b.create_block();
        b.def_var(image, first);
        b.ins().jump(header, &[]);

        b.switch_to_block(header);
        let n = b.use_var(image);
        let done = b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, n, end);
        b.ins().brif(done, next, &[], body, &[]);

        b.switch_to_block(body);
        let n = b.use_var(image);
        let out = address(&mut b, call.output, n)?;
        for (j, &(piece, channels)) in call.pieces.iter().enumerate() {
            let p = address(&mut b, piece, n)?;
            let c = iconst(&mut b, channels)?;
            let at = (j * 16) as i32;
            let slot_addr = b.ins().stack_addr(ptr, slot, 0);
            b.ins().store(flags, p, slot_addr, at);
            b.ins().store(flags, c, slot_addr, at + 8);
        }
        let pieces = b.ins().stack_addr(ptr, slot, 0);
        let desc_off = iconst(&mut b, call.desc_offset)?;
        let desc = b.ins().iadd(consts, desc_off);
        let entry_off = i32::try_from(call.kernel * 8).map_err(|_| BackendError::TooLarge {
            what: "kernel index".into(),
        })?;
        let callee = b.ins().load(ptr, flags, table, entry_off);
        let inst =
            b.ins()
                .call_indirect(kernel_sig, callee, &[desc, pieces, out, weights, context]);
        let status = b.inst_results(inst)[0];
        let one = b.ins().iconst(types::I64, 1);
        let n1 = b.ins().iadd(n, one);
        b.def_var(image, n1);
        let zero32 = b.ins().iconst(types::I32, 0);
        let ok = b.ins().icmp(IntCC::Equal, status, zero32);
        // On failure return (step + 1) * 256 + status, so the runtime can name the step.
        let tag = i32::try_from((index + 1) * 256)
            .map(i64::from)
            .map_err(|_| BackendError::TooLarge {
                what: format!("{index} steps"),
            })?;
        let tagged = b.ins().iadd_imm_s(status, tag);
        b.ins()
            .brif(ok, header, &[], fail, &[BlockArg::Value(tagged)]);

        b.switch_to_block(next);
    }
    let ok = b.ins().iconst(types::I32, 0);
    b.ins().return_(&[ok]);
    b.switch_to_block(fail);
    b.ins().return_(&[status_param]);
    b.seal_all_blocks();
    b.finalize(isa.frontend_config());

    let compiled = ctx
        .compile(&*isa, &mut ControlPlane::default())
        .map_err(|e| BackendError::Cranelift(format!("{:?}", e.inner)))?;
    let relocs = compiled.buffer.relocs().len();
    if relocs != 0 {
        return Err(BackendError::Relocations(relocs));
    }
    Ok(Compiled {
        code: compiled.code_buffer().to_vec(),
        features: Vec::new(),
        arch: arch.name().into(),
    })
}
