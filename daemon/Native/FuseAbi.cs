using System.Runtime.InteropServices;

namespace DirBackup.Native;

/// <summary>
/// The parts of the kernel's FUSE protocol (include/uapi/linux/fuse.h, 7.x) a read-only single-file server needs.
/// The layout is the kernel's ABI, stable since 7.28, which every supported kernel speaks.
/// </summary>
internal static class FuseAbi
{
    public const uint KernelMajor = 7;
    public const uint MinimumMinor = 28; // max_pages
    public const uint ReplyMinor = 31;

    public const uint Lookup = 1;
    public const uint Forget = 2;
    public const uint GetAttr = 3;
    public const uint SetAttr = 4;
    public const uint Open = 14;
    public const uint Read = 15;
    public const uint Write = 16;
    public const uint StatFs = 17;
    public const uint Release = 18;
    public const uint Fsync = 20;
    public const uint Flush = 25;
    public const uint Init = 26;
    public const uint Access = 34;
    public const uint Interrupt = 36;
    public const uint Destroy = 38;
    public const uint BatchForget = 42;
    public const uint Fallocate = 43;
    public const uint Lseek = 46;

    public const uint AsyncRead = 1u << 0;
    public const uint AsyncDirectIo = 1u << 15;
    public const uint MaxPagesFlag = 1u << 22;

    public const uint OpenDirectIo = 1u << 0;

    public const int SeekData = 3;
    public const int SeekHole = 4;

    public const int ENOENT = 2;
    public const int EIO = 5;
    public const int ENXIO = 6;
    public const int EINVAL = 22;
    public const int EROFS = 30;
    public const int ENOSYS = 38;
    public const int ENODEV = 19;

    public const ulong RootNode = 1;

    [StructLayout(LayoutKind.Sequential)]
    public struct InHeader
    {
        public uint Length;
        public uint Opcode;
        public ulong Unique;
        public ulong NodeId;
        public uint Uid;
        public uint Gid;
        public uint Pid;
        public ushort TotalExtLength;
        public ushort Padding;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct OutHeader
    {
        public uint Length;
        public int Error;
        public ulong Unique;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct InitIn
    {
        public uint Major;
        public uint Minor;
        public uint MaxReadahead;
        public uint Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct InitOut
    {
        public uint Major;
        public uint Minor;
        public uint MaxReadahead;
        public uint Flags;
        public ushort MaxBackground;
        public ushort CongestionThreshold;
        public uint MaxWrite;
        public uint TimeGranularity;
        public ushort MaxPages;
        public ushort MapAlignment;
        public uint Flags2;
        public fixed uint Unused[7];
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct Attr
    {
        public ulong Ino;
        public ulong Size;
        public ulong Blocks;
        public ulong ATime;
        public ulong MTime;
        public ulong CTime;
        public uint ATimeNsec;
        public uint MTimeNsec;
        public uint CTimeNsec;
        public uint Mode;
        public uint NLink;
        public uint Uid;
        public uint Gid;
        public uint RDev;
        public uint BlockSize;
        public uint Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct AttrOut
    {
        public ulong AttrValid;
        public uint AttrValidNsec;
        public uint Dummy;
        public Attr Attr;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct OpenIn
    {
        public uint Flags;
        public uint OpenFlags;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct OpenOut
    {
        public ulong FileHandle;
        public uint OpenFlags;
        public uint BackingId;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct ReadIn
    {
        public ulong FileHandle;
        public ulong Offset;
        public uint Size;
        public uint ReadFlags;
        public ulong LockOwner;
        public uint Flags;
        public uint Padding;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct LseekIn
    {
        public ulong FileHandle;
        public ulong Offset;
        public uint Whence;
        public uint Padding;
    }

    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct StatFsOut
    {
        public ulong Blocks;
        public ulong BlocksFree;
        public ulong BlocksAvailable;
        public ulong Files;
        public ulong FilesFree;
        public uint BlockSize;
        public uint NameLength;
        public uint FragmentSize;
        public uint Padding;
        public fixed uint Spare[6];
    }
}
