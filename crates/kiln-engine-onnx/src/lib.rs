//! ONNX models on ONNX Runtime.
//!
//! ONNX Runtime is not linked at build time: [`OnnxRuntime::load`] opens the shared library
//! (`libonnxruntime.so`, version 1.22 or newer) once per process, and every [`OnnxModel`] runs
//! in a session of that runtime. `scripts/install-onnxruntime.sh` takes the library out of the
//! pinned `onnxruntime` wheel from PyPI.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_engine::{ElementType, Engine, EngineError, Tensor, TensorData, TensorSpec};
use ort::environment::Environment;
use ort::session::builder::{AutoDevicePolicy, GraphOptimizationLevel};
use ort::session::Session;
use ort::value::{DynValue, TensorElementType, ValueType};

/// The process-wide ONNX Runtime, loaded from one shared library.
#[derive(Clone)]
pub struct OnnxRuntime {
    environment: Environment,
    library: PathBuf,
}

static RUNTIME: OnceLock<Result<OnnxRuntime, String>> = OnceLock::new();

impl OnnxRuntime {
    /// Loads ONNX Runtime from `library`. Only the first call in a process opens a library;
    /// later calls return that runtime, or an error when they name a different file.
    pub fn load(library: &Path) -> Result<OnnxRuntime, EngineError> {
        let runtime = RUNTIME.get_or_init(|| open(library)).clone();
        let runtime = runtime.map_err(EngineError::Load)?;
        if runtime.library != library {
            return Err(EngineError::Load(format!(
                "ONNX Runtime is already loaded from {}; one process can load only one library, \
                 not also {}",
                runtime.library.display(),
                library.display()
            )));
        }
        Ok(runtime)
    }

    /// The shared library this runtime was loaded from.
    pub fn library(&self) -> &Path {
        &self.library
    }
}

fn open(library: &Path) -> Result<OnnxRuntime, String> {
    if !library.is_file() {
        return Err(format!(
            "the ONNX Runtime library {} does not exist; install it with \
             scripts/install-onnxruntime.sh or set onnx.runtime_library in kiln.toml",
            library.display()
        ));
    }
    let builder = ort::init_from(library).map_err(|error| {
        format!(
            "failed to load the ONNX Runtime library {}: {error}",
            library.display()
        )
    })?;
    let environment = builder
        .with_name("kiln")
        .with_telemetry(false)
        .build()
        .map_err(|error| format!("failed to start ONNX Runtime: {error}"))?;
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    Ok(OnnxRuntime {
        environment,
        library: library.to_path_buf(),
    })
}

/// Settings of one ONNX session.
#[derive(Debug, Clone, Default)]
pub struct OnnxOptions {
    /// Threads of one forward pass; 0 lets ONNX Runtime use one per physical core.
    pub threads: usize,
}

/// One ONNX graph in an ONNX Runtime session.
pub struct OnnxModel {
    session: Session,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl OnnxModel {
    /// Loads the graph at `path` with every graph optimisation enabled, as the Python
    /// `onnxruntime` package does by default, and with intra-op spinning disabled.
    pub fn load(
        runtime: &OnnxRuntime,
        path: &Path,
        options: &OnnxOptions,
    ) -> Result<OnnxModel, EngineError> {
        let load_error =
            |error: ort::Error| EngineError::Load(format!("{}: {error}", path.display()));
        // `ort` 2.0.0-rc.15 turns on ONNX Runtime's automatic device selection (max-efficiency
        // policy) for every session. Kiln runs on the CPU, so it asks for the CPU. NOTE: ONNX
        // Runtime 1.22.1 enumerates no devices here, so its sessions abort (max-efficiency) or
        // fail to load (prefer-CPU); 1.23.2, which install-onnxruntime.sh pins, works.
        let mut builder = Session::builder(&runtime.environment)
            .map_err(load_error)?
            .with_auto_device(AutoDevicePolicy::PreferCPU)
            .map_err(|error| load_error(error.into()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|error| load_error(error.into()))?
            // Idle intra-op threads block instead of spinning. A node shares its cores with
            // llama.cpp, other models' threads and the HTTP server, and a spinning thread keeps
            // a core busy that they need. On 2 shared cores (load average 3.5), MiniLM on
            // Python's onnxruntime 1.23.2 with 2 threads ran 218 instead of 168 sentences/s at
            // batch 32, and 167 instead of 102 at batch 1, with spinning off.
            // NOTE: on idle cores, spinning may save the wake-up time of each parallel operator;
            // that case was not measured.
            .with_intra_op_spinning(false)
            .map_err(|error| load_error(error.into()))?;
        if options.threads > 0 {
            builder = builder
                .with_intra_threads(options.threads)
                .map_err(|error| load_error(error.into()))?;
        }
        let session = builder.commit_from_file(path).map_err(load_error)?;
        let inputs = session
            .inputs()
            .iter()
            .map(|outlet| spec(outlet.name(), outlet.dtype()))
            .collect();
        let outputs = session
            .outputs()
            .iter()
            .map(|outlet| spec(outlet.name(), outlet.dtype()))
            .collect();
        Ok(OnnxModel {
            session,
            inputs,
            outputs,
        })
    }
}

fn spec(name: &str, dtype: &ValueType) -> TensorSpec {
    let element_type = dtype.tensor_type().map_or(ElementType::Other, element_type);
    let shape = dtype
        .tensor_shape()
        .map(|shape| shape.iter().map(|&dim| usize::try_from(dim).ok()).collect())
        .unwrap_or_default();
    TensorSpec {
        name: name.to_string(),
        element_type,
        shape,
    }
}

fn element_type(ty: TensorElementType) -> ElementType {
    match ty {
        TensorElementType::Float32 => ElementType::F32,
        TensorElementType::Float64 => ElementType::F64,
        TensorElementType::Int32 => ElementType::I32,
        TensorElementType::Int64 => ElementType::I64,
        TensorElementType::Bool => ElementType::Bool,
        _ => ElementType::Other,
    }
}

fn to_value(tensor: Tensor) -> Result<DynValue, ort::Error> {
    let shape = tensor.shape;
    let value = match tensor.data {
        TensorData::F32(values) => ort::value::Tensor::from_array((shape, values))?.into_dyn(),
        TensorData::F64(values) => ort::value::Tensor::from_array((shape, values))?.into_dyn(),
        TensorData::I32(values) => ort::value::Tensor::from_array((shape, values))?.into_dyn(),
        TensorData::I64(values) => ort::value::Tensor::from_array((shape, values))?.into_dyn(),
        TensorData::Bool(values) => ort::value::Tensor::from_array((shape, values))?.into_dyn(),
    };
    Ok(value)
}

fn from_value(name: &str, value: &DynValue) -> Result<Tensor, EngineError> {
    let run_error = |error: ort::Error| EngineError::Run(format!("output `{name}`: {error}"));
    let Some(ty) = value.dtype().tensor_type() else {
        return Err(EngineError::Run(format!(
            "output `{name}` is a {:?}, not a tensor; Kiln reads only tensor outputs",
            value.dtype()
        )));
    };
    fn parts<T: ort::value::PrimitiveTensorElementType + Clone>(
        value: &DynValue,
    ) -> Result<(Vec<usize>, Vec<T>), ort::Error> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        let shape = shape.iter().map(|&dim| dim.max(0) as usize).collect();
        Ok((shape, data.to_vec()))
    }
    let (shape, data) = match ty {
        TensorElementType::Float32 => {
            let (shape, data) = parts::<f32>(value).map_err(run_error)?;
            (shape, TensorData::F32(data))
        }
        TensorElementType::Float64 => {
            let (shape, data) = parts::<f64>(value).map_err(run_error)?;
            (shape, TensorData::F64(data))
        }
        TensorElementType::Int32 => {
            let (shape, data) = parts::<i32>(value).map_err(run_error)?;
            (shape, TensorData::I32(data))
        }
        TensorElementType::Int64 => {
            let (shape, data) = parts::<i64>(value).map_err(run_error)?;
            (shape, TensorData::I64(data))
        }
        TensorElementType::Bool => {
            let (shape, data) = parts::<bool>(value).map_err(run_error)?;
            (shape, TensorData::Bool(data))
        }
        other => {
            return Err(EngineError::Run(format!(
                "output `{name}` has element type {other:?}, which Kiln cannot read"
            )))
        }
    };
    Tensor::new(shape, data)
}

impl Engine for OnnxModel {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&mut self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, EngineError> {
        let mut values = Vec::with_capacity(inputs.len());
        for (name, tensor) in inputs {
            let value = to_value(tensor)
                .map_err(|error| EngineError::InvalidInput(format!("input `{name}`: {error}")))?;
            values.push((name, value));
        }
        let outputs = self
            .session
            .run(values)
            .map_err(|error| EngineError::Run(error.to_string()))?;
        let mut tensors = Vec::with_capacity(self.outputs.len());
        for spec in &self.outputs {
            let value = outputs.get(&spec.name).ok_or_else(|| {
                EngineError::Run(format!("the session returned no output `{}`", spec.name))
            })?;
            tensors.push((spec.name.clone(), from_value(&spec.name, value)?));
        }
        Ok(tensors)
    }
}
