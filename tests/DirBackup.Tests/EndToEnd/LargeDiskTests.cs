using System.Diagnostics;
using System.Globalization;
using System.IO.Hashing;
using System.Text.Json.Nodes;
using DirBackup.Qemu;
using DirBackup.Store;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.EndToEnd;

/// <summary>
/// A disk far larger than the daemon's memory: its digests alone are 1/4096 of it (256 MiB for this terabyte), and
/// neither they nor its block-status map nor its plan may be held whole. The writes sit across the plan's windows
/// (1 GiB), across a unit's limit of chunks (256 MiB of disk), in the middle and in the disk's last block.
/// </summary>
[Trait("speed", "slow")]
public sealed class LargeDiskTests : IDisposable
{
    private const string Device = "drive-scsi0";
    private const long Size = 1L << 40;
    private const int Block = 64 << 10;
    private const long GiB = 1L << 30;

    /// <summary>Issue 3's memory target, measured there on a 4 GiB disk.</summary>
    private const long MemoryTargetKiB = 300 << 10;

    private readonly TempDir _dir = new("dirbackup-large");

    [Fact]
    public async Task A_terabyte_disk_backs_up_full_then_incremental_in_bounded_memory_with_every_block_digested()
    {
        var socket = _dir.Combine("run", "dirbackupd.sock");
        await using var daemon = await DaemonProcess.StartAsync(socket);
        var storage = new StorageBuilder(_dir.Combine("store"), "large");
        var store = new BackupStore(new StorageConfig("large", storage.Root), new StoreSettings());
        var disk = await SourceDisk.CreateAsync(_dir.Combine("vm"), Size, "snapshot-access:large");
        var patterns = new Dictionary<long, byte>(); // block index -> the byte it is filled with; absent: zeroes

        async Task WriteAsync(params (long Offset, int Blocks, byte Pattern)[] writes)
        {
            await disk.WriteAsync(writes.Select(w => w.Pattern == 0
                ? $"write -z {w.Offset} {w.Blocks * Block}"
                : $"write -P {w.Pattern} {w.Offset} {w.Blocks * Block}").ToArray());
            foreach (var (offset, blocks, pattern) in writes)
            {
                for (long b = offset / Block; b < offset / Block + blocks; b++)
                {
                    patterns[b] = pattern;
                }
            }
        }

        async Task BackUpAsync(long time)
        {
            await using var access = await disk.OpenBackupAccessAsync(Device);
            var run = await VzdumpVm.RunAsync(socket, storage, 100, Device, Size, access.SocketPath, disk.Bitmap, time);
            Assert.True(run.ExitCode == 0, run.Log);
            var dir = Path.Combine(storage.Root, "100", $"qemu-{time}");
            await ChildProcess.RunAsync("qemu-img", ["compare", "-q", "-f", "qcow2", "-F", "qcow2", access.FrozenState, Path.Combine(dir, Device + ".qcow2")], CancellationToken.None);
            AssertDigests(Path.Combine(dir, Device + ".digests"), patterns);
            await disk.CommitBitmapAsync();
        }

        await WriteAsync((0, 1, 0x11), ((256L << 20) - Block, 2, 0x22), (GiB - Block, 2, 0x33), (Size / 2 + 12345L * Block, 1, 0x44), (Size - Block, 1, 0x55));
        await BackUpAsync(1700000000);
        Assert.True(PeakRssKiB(daemon.Pid) < MemoryTargetKiB, $"the daemon's peak RSS reached {PeakRssKiB(daemon.Pid)} KiB in a full backup of a terabyte");

        // Beside a kept block, over data in the next window, zeroes over data, a new block.
        await WriteAsync((GiB - 2 * Block, 1, 0x66), (GiB, 1, 0x77), (Size / 2 + 12345L * Block, 1, 0), (3 * GiB + 7L * Block, 1, 0x88));
        await BackUpAsync(1700000100);
        Assert.True(PeakRssKiB(daemon.Pid) < MemoryTargetKiB, $"the daemon's peak RSS reached {PeakRssKiB(daemon.Pid)} KiB in an incremental backup of a terabyte");
        var incremental = store.ReadManifest(VolumeName.Parse("backup/100/qemu-1700000100")).Devices.Single();
        Assert.Equal("qemu-1700000000", incremental.Parent);
        Assert.Equal(4L * Block, incremental.Extra!["bytes-read"].GetInt64());
    }

    /// <summary>
    /// A restore's map of where each byte of the disk lives: a million ranges here, as a busy disk's chain has (the
    /// incremental wrote zeroes over every other 64 KiB cluster of a 64 GiB disk whose full backup holds it all).
    /// qemu-img map describes them in 110 MiB of JSON, which must not be held whole either.
    /// </summary>
    [Fact]
    public async Task A_chain_of_a_million_ranges_is_exported_for_restore_in_bounded_memory_and_reads_right()
    {
        const long size = 64 * GiB;
        const long ranges = size / (2 * Block) * 2;
        var socket = _dir.Combine("run", "dirbackupd.sock");
        await using var daemon = await DaemonProcess.StartAsync(socket);
        var storage = new StorageBuilder(_dir.Combine("store"), "large");
        // Metadata preallocation makes every cluster of the full backup's image data that reads as zeroes.
        await storage.AddVmWithImageAsync(100, 1700000000, null, size, ["-o", "preallocation=metadata"],
            $"write -P 0x11 0 {Block}", $"write -P 0x22 {size / 2} {2 * Block}", $"write -P 0x33 {size - Block} {Block}");
        var top = await storage.AddVmWithImageAsync(100, 1700000100, "1700000000", size, [], $"write -P 0x44 {size / 2 + Block} {Block}");
        await WriteEveryOtherClusterZeroAsync(Path.Combine(top.Directory, Device + ".qcow2"), size, skip: size / 2);
        var mapped = await ChildProcess.RunAsync("qemu-img", ["map", "--output=json", "-f", "qcow2", Path.Combine(top.Directory, Device + ".qcow2")], CancellationToken.None);
        Assert.True(mapped.Count(c => c == '\n') >= ranges, $"qemu-img map gave {mapped.Count(c => c == '\n')} ranges, fewer than {ranges}");
        mapped = null;

        using var client = LineClient.Connect(socket);
        client.Call("restore_vm_init", Json.Params(storage, ("volname", top.VolName)));
        var path = client.Call("restore_vm_volume_init", Json.Params(storage, ("volname", top.VolName), ("device", Device), ("info", new JsonObject())))!["qemu-img-path"]!.GetValue<string>();
        Assert.True(PeakRssKiB(daemon.Pid) < MemoryTargetKiB, $"the daemon's peak RSS reached {PeakRssKiB(daemon.Pid)} KiB exporting a chain of {ranges} ranges");

        using (var export = File.OpenHandle(path))
        {
            Assert.Equal(size, RandomAccess.GetLength(export));
            void AssertReads(long offset, byte expected)
            {
                var buffer = new byte[Block];
                Assert.Equal(Block, RandomAccess.Read(export, buffer, offset));
                Assert.True(buffer.All(b => b == expected), $"the block at {offset} does not read as 0x{expected:x2}");
            }
            AssertReads(0, 0);                   // zeroes written over the full backup's data
            AssertReads(Block, 0);               // the full backup's cluster that reads as zeroes
            AssertReads(size / 2, 0x22);         // the full backup's data where the incremental left it
            AssertReads(size / 2 + Block, 0x44); // the incremental's data
            AssertReads(size - 3 * Block, 0);
            AssertReads(size - Block, 0x33);
        }
        client.Call("restore_vm_volume_cleanup", Json.Params(storage, ("volname", top.VolName), ("device", Device), ("info", new JsonObject())));
        client.Call("restore_vm_cleanup", Json.Params(storage, ("volname", top.VolName)));
    }

    /// <summary>Zeroes over every other cluster, but the two at <paramref name="skip"/>; qemu-io takes the commands on stdin, far too many for arguments.</summary>
    private static async Task WriteEveryOtherClusterZeroAsync(string image, long size, long skip)
    {
        var info = new ProcessStartInfo("qemu-io") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in new[] { "-t", "writeback", "-f", "qcow2", image })
        {
            info.ArgumentList.Add(arg);
        }
        using var qemuIo = Process.Start(info)!;
        var output = qemuIo.StandardOutput.ReadToEndAsync();
        var errors = qemuIo.StandardError.ReadToEndAsync();
        for (long offset = 0; offset < size; offset += 2 * Block)
        {
            if (offset != skip)
            {
                await qemuIo.StandardInput.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"write -z {offset} {Block}"));
            }
        }
        qemuIo.StandardInput.Close();
        await qemuIo.WaitForExitAsync();
        await output;
        Assert.True(qemuIo.ExitCode == 0 && (await errors).Length == 0, "qemu-io: " + await errors);
    }

    /// <summary>Every block's digest: of its pattern where one was written, of zeroes everywhere else.</summary>
    private static void AssertDigests(string file, Dictionary<long, byte> patterns)
    {
        var zero = XxHash128.Hash(new byte[Block]);
        var digestOf = patterns.Values.Distinct().ToDictionary(p => p, p => XxHash128.Hash(Enumerable.Repeat(p, Block).ToArray()));
        using var digests = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        Assert.Equal(Size / Block * 16, digests.Length);
        var buffer = new byte[1 << 20];
        for (long block = 0; block < Size / Block;)
        {
            digests.ReadExactly(buffer);
            for (int i = 0; i < buffer.Length; i += 16, block++)
            {
                var expected = patterns.TryGetValue(block, out var pattern) ? digestOf[pattern] : zero;
                Assert.True(expected.AsSpan().SequenceEqual(buffer.AsSpan(i, 16)), $"digest of block {block} (at {block * Block}) differs");
            }
        }
    }

    private static long PeakRssKiB(int pid)
    {
        var line = File.ReadLines($"/proc/{pid}/status").Single(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
    }

    public void Dispose() => _dir.Dispose();
}
