//! Classify an image with the AIY birds model through wasi-nn, as the WasmEdge examples do.
//!
//!     tflite-birds MODEL IMAGE
//!
//! MODEL is a .tflite file (read through a preopened directory, `--dir .:.`), or the name of a
//! model the host preloaded (`--nn-preload NAME:TensorflowLite:CPU:PATH`). Prints the top 5 as
//! `rank.) [class](score out of 255)`.

use std::error::Error;
use std::path::Path;
use std::{env, fs, process};

use wasi_nn::{ExecutionTarget, Graph, GraphBuilder, GraphEncoding, TensorType};

const SIDE: u32 = 224;
const CLASSES: usize = 965;

fn main() {
    let args: Vec<String> = env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: tflite-birds MODEL.tflite|PRELOADED-NAME IMAGE");
        process::exit(2);
    }
    if let Err(error) = classify(&args[1], &args[2]) {
        eprintln!("tflite-birds: {}", error);
        process::exit(1);
    }
}

fn classify(model: &str, image_path: &str) -> Result<(), Box<dyn Error>> {
    let builder = GraphBuilder::new(GraphEncoding::TensorflowLite, ExecutionTarget::CPU);
    let graph: Graph = if Path::new(model).is_file() {
        let weights = fs::read(model)?;
        println!("Read graph weights, size in bytes: {}", weights.len());
        builder.build_from_bytes([&weights])?
    } else {
        println!("Loading the preloaded graph {}", model);
        builder.build_from_cache(model)?
    };
    let mut context = graph.init_execution_context()?;

    let image = image::open(image_path)?;
    let pixels = image
        .resize_exact(SIDE, SIDE, image::imageops::FilterType::Triangle)
        .to_rgb8()
        .into_raw();
    println!("Read input tensor, size in bytes: {}", pixels.len());
    context.set_input(0, TensorType::U8, &[1, SIDE as usize, SIDE as usize, 3], &pixels)?;
    context.compute()?;

    let mut scores = vec![0u8; CLASSES];
    context.get_output(0, &mut scores)?;
    let mut ranked: Vec<(usize, u8)> = scores.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (rank, (class, score)) in ranked.iter().take(5).enumerate() {
        println!("   {}.) [{}]({})", rank + 1, class, score);
    }
    Ok(())
}
