// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title AutoPayMulticall
/// @notice The `aggregate3` entry point of Multicall3 (same ABI, same semantics) for local
///         chains, where the canonical Multicall3 (0xcA11bde05977b3631167028862bE2a173976CA11)
///         is not deployed. The engine settles a batch of EIP-3009 authorizations in one
///         transaction through it: each call with `allowFailure`, so one failing authorization
///         does not revert the others, and each call's outcome is returned (for `eth_call`
///         simulations) and visible in the receipt (the token's `AuthorizationUsed` events).
///         On a real network point CHAIN_MULTICALL_ADDRESS at the canonical Multicall3.
contract AutoPayMulticall {
    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    /// @notice Call each target in order; revert only when a call that does not allow
    ///         failure fails (with Multicall3's own message).
    function aggregate3(Call3[] calldata calls)
        external
        payable
        returns (Result[] memory returnData)
    {
        uint256 length = calls.length;
        returnData = new Result[](length);
        for (uint256 i = 0; i < length; ) {
            Call3 calldata call = calls[i];
            (bool success, bytes memory result) = call.target.call(call.callData);
            if (!success && !call.allowFailure) {
                revert("Multicall3: call failed");
            }
            returnData[i] = Result(success, result);
            unchecked {
                ++i;
            }
        }
    }
}
