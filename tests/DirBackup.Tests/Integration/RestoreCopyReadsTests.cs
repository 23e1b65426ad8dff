using System.Text.Json.Nodes;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Integration;

/// <summary>
/// The restore export's copying read path: every reply through the daemon's memory. Splicing takes all reads where
/// the pipe holds them, so this path is otherwise reached only by replies that do not fit, or by kernels that refuse.
/// </summary>
[Trait("speed", "slow")]
public sealed class RestoreCopyReadsTests : IDisposable
{
    private const string Device = "drive-scsi0";
    private const long Size = 16L << 20;
    private readonly TempDir _dir = new("dirbackup-copyreads");

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task A_chain_restored_through_copied_reads_equals_the_chain_and_shows_its_holes()
    {
        var socket = _dir.Combine("run", "dirbackupd.sock");
        await using var daemon = await DaemonProcess.StartAsync(socket, options: ["--restore-reads", "copy"]);
        var storage = new StorageBuilder(_dir.Combine("store"), "copyreads");
        var disk = await SourceDisk.CreateAsync(_dir.Combine("vm"), Size, "snapshot-access:copy");
        await disk.WriteAsync("write -P 0x31 0 3M");
        foreach (var time in new[] { 1700000000, 1700000100 })
        {
            await VzdumpVm.BackUpAsync(socket, storage, 100, Device, disk, time);
            // Unaligned to the reads, so replies mix layers and zeroes.
            await disk.WriteAsync("write -P 0x42 1500k 2M");
        }

        using var client = LineClient.Connect(socket);
        const string volname = "backup/100/qemu-1700000100";
        client.Call("restore_vm_init", Json.Params(storage, ("volname", volname)));
        var path = client.Call("restore_vm_volume_init", Json.Params(storage, ("volname", volname), ("device", Device), ("info", new JsonObject())))!["qemu-img-path"]!.GetValue<string>();

        await SourceDisk.Run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", path, Path.Combine(storage.Root, "100", "qemu-1700000100", Device + ".qcow2"));
        // The rewrite ends at 3548k, in the 64 KiB cluster that ends at 3584k.
        Assert.Equal([(0L, 3584L << 10)], await SourceDisk.DataRangesAsync(path));

        client.Call("restore_vm_volume_cleanup", Json.Params(storage, ("volname", volname), ("device", Device), ("info", new JsonObject())));
        client.Call("restore_vm_cleanup", Json.Params(storage, ("volname", volname)));
        Assert.False(File.Exists(path));
    }
}
