// One BitLinear layer as MLIR (linalg on tensors), filled in by `trifecta.edge.npu`.
// x (B, K) f32 -> (acc (B, N) i32, y (B, N) f32): per-token absmax int8 quantisation, the
// ternary product with 2-bit packed weights unpacked in the kernel, the float32 rescaling.
// The affine maps #rows_k, #rows, #vec, #packed_byte, #mk, #nk, #mn are defined by the module.
  func.func @$function(%x: tensor<?x${k}xf32>) -> (tensor<?x${n}xi32>, tensor<?x${n}xf32>) {
    %c0 = arith.constant 0 : index
    %b = tensor.dim %x, %c0 : tensor<?x${k}xf32>
    %zero_f = arith.constant 0.0 : f32
    %zero_i = arith.constant 0 : i32
    %gamma_init = tensor.empty(%b) : tensor<?xf32>
    %gamma_zero = linalg.fill ins(%zero_f : f32) outs(%gamma_init : tensor<?xf32>) -> tensor<?xf32>
    %absmax = linalg.generic {indexing_maps = [#rows_k, #rows], iterator_types = ["parallel", "reduction"]}
        ins(%x : tensor<?x${k}xf32>) outs(%gamma_zero : tensor<?xf32>) {
      ^bb0(%v: f32, %m: f32):
        %a = math.absf %v : f32
        %r = arith.maximumf %m, %a : f32
        linalg.yield %r : f32
    } -> tensor<?xf32>
    %mult_init = tensor.empty(%b) : tensor<?xf32>
    %multiplier = linalg.generic {indexing_maps = [#vec, #vec], iterator_types = ["parallel"]}
        ins(%absmax : tensor<?xf32>) outs(%mult_init : tensor<?xf32>) {
      ^bb0(%m: f32, %o: f32):
        %floor = arith.constant 1.0e-05 : f32
        %levels = arith.constant 127.0 : f32
        %g = arith.maximumf %m, %floor : f32
        %r = arith.divf %levels, %g : f32
        linalg.yield %r : f32
    } -> tensor<?xf32>
    %xq_init = tensor.empty(%b) : tensor<?x${k}xi8>
    %xq = linalg.generic {indexing_maps = [#rows_k, #rows, #rows_k], iterator_types = ["parallel", "parallel"]}
        ins(%x, %multiplier : tensor<?x${k}xf32>, tensor<?xf32>) outs(%xq_init : tensor<?x${k}xi8>) {
      ^bb0(%v: f32, %s: f32, %o: i8):
        %lo = arith.constant -128.0 : f32
        %hi = arith.constant 127.0 : f32
        %p = arith.mulf %v, %s : f32
        %r = math.roundeven %p : f32
        %c = arith.minimumf %r, %hi : f32
        %d = arith.maximumf %c, %lo : f32
        %q = arith.fptosi %d : f32 to i8
        linalg.yield %q : i8
    } -> tensor<?x${k}xi8>
    %packed = arith.constant dense<"${weights}"> : tensor<${n}x${width}xi8>
    %w_init = tensor.empty() : tensor<${n}x${k}xi8>
    %w = linalg.generic {indexing_maps = [#packed_byte, #rows_k], iterator_types = ["parallel", "parallel"]}
        ins(%packed : tensor<${n}x${width}xi8>) outs(%w_init : tensor<${n}x${k}xi8>) {
      ^bb0(%byte: i8, %o: i8):
        %col = linalg.index 1 : index
        %c4 = arith.constant 4 : index
        %c2 = arith.constant 2 : index
        %field = arith.remui %col, %c4 : index
        %bits = arith.muli %field, %c2 : index
        %shift = arith.index_cast %bits : index to i8
        %moved = arith.shrui %byte, %shift : i8
        %three = arith.constant 3 : i8
        %one = arith.constant 1 : i8
        %code = arith.andi %moved, %three : i8
        %t = arith.subi %code, %one : i8
        linalg.yield %t : i8
    } -> tensor<${n}x${k}xi8>
    %acc_init = tensor.empty(%b) : tensor<?x${n}xi32>
    %acc_zero = linalg.fill ins(%zero_i : i32) outs(%acc_init : tensor<?x${n}xi32>) -> tensor<?x${n}xi32>
    %acc = linalg.matmul indexing_maps = [#mk, #nk, #mn]
        ins(%xq, %w : tensor<?x${k}xi8>, tensor<${n}x${k}xi8>) outs(%acc_zero : tensor<?x${n}xi32>) -> tensor<?x${n}xi32>
    %y_init = tensor.empty(%b) : tensor<?x${n}xf32>
    %y = linalg.generic {indexing_maps = [#rows_k, #rows, #rows_k], iterator_types = ["parallel", "parallel"]}
        ins(%acc, %multiplier : tensor<?x${n}xi32>, tensor<?xf32>) outs(%y_init : tensor<?x${n}xf32>) {
      ^bb0(%a: i32, %s: f32, %o: f32):
        %beta = arith.constant $scale : f32
        %af = arith.sitofp %a : i32 to f32
        %ratio = arith.divf %beta, %s : f32
        %r = arith.mulf %af, %ratio : f32
        linalg.yield %r : f32
    } -> tensor<?x${n}xf32>
    return %acc, %y : tensor<?x${n}xi32>, tensor<?x${n}xf32>
  }
